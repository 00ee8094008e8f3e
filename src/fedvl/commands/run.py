"""``fedvl run``: one experiment, and ``fedvl run --resume`` to continue a stopped one."""

from __future__ import annotations

import argparse
import sys

from fedvl.commands import EXIT_USAGE, Terminated, one_line, split_args

RUN_HELP = """\
Run one federated experiment and write a results folder
(config.yaml, metrics.jsonl, summary.md/json, accuracy.png, status.json).

With no CONFIG the embedded default runs: FedAvg over bottleneck adapters on the
pretrained MiniLM-L6 + MobileNetV2 model, Domain benchmark, 4 clients.
Override any key with key=value, e.g.:

  fedvl run algorithm.name=local algorithm.rounds=5
  fedvl run configs/fedavg-adapter-domain.yaml model.peft=lora run.seed=1
  fedvl run model.name=tiny data.train_images=20          (seconds, for a smoke test)
  fedvl run model.name=hf-vlm model.checkpoint=DIR model.peft=lora
                                  (a generative VLM: LLaVA, Qwen-VL, SmolVLM, Gemma 3; docs/generative.md)

A run commits a checkpoint after every round; `fedvl run --resume RESULTS_DIR`
continues a killed run from its last complete round with the folder's config.

Sections and keys: see `fedvl show-config`.
"""


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="run one experiment", description=RUN_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("args", nargs="*", metavar="CONFIG|key=value",
                     help="an optional YAML config file first, then key=value overrides")
    run.add_argument("--overwrite", action="store_true", help="replace an existing results folder of the same name")
    run.add_argument("--quiet", action="store_true", help="no live progress bars")
    run.add_argument("--resume", metavar="RESULTS_DIR",
                     help="continue a stopped run from its last complete round, with the folder's config.yaml")
    run.add_argument("--accept-config-change", action="store_true",
                     help="with --resume: continue although config.yaml changed since the last checkpoint")
    run.set_defaults(handler=main)


def main(ns) -> int:
    from fedvl.config import load_config
    from fedvl.schema import ConfigError

    if ns.resume:
        return _resume(ns)
    if ns.accept_config_change:
        raise ConfigError("--accept-config-change goes with --resume RESULTS_DIR")
    path, overrides = split_args(ns.args)
    cfg = load_config(path, overrides)
    from fedvl.experiment import run_dir_for
    from fedvl.models.backbones import ModelUnavailableError, check_available

    if cfg.run.runtime == "flower-deploy":
        raise ConfigError("run.runtime=flower-deploy is a real Flower deployment: start it with `fedvl serve` "
                          "and `fedvl join`")
    try:
        check_available(cfg.model)  # a missing weights package: one line, no results folder
    except ModelUnavailableError as e:
        print(f"fedvl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if cfg.data.benchmark == "real":
        from fedvl.data.real import check_sources

        check_sources(cfg.data)  # a missing dataset folder: one line (ConfigError), no results folder
    run_dir = run_dir_for(cfg, overwrite=ns.overwrite)
    from fedvl.estimate import plausibility_warning

    warning = plausibility_warning(cfg)  # an hour per round is rarely what the user meant
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return _run_and_report(cfg, run_dir, ns)


def _run_and_report(cfg, run_dir, ns, resume: bool = False) -> int:
    import signal

    from fedvl.experiment import resume_round, run_experiment
    from fedvl.models.backbones import ModelUnavailableError
    from fedvl.runfolder import has_status

    try:
        run_experiment(cfg, run_dir, progress_enabled=not ns.quiet, resume=resume, overwrite=ns.overwrite,
                       accept_config_change=ns.accept_config_change)
    except ModelUnavailableError as e:
        print(f"fedvl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        if not has_status(run_dir):  # stopped before the run had a folder
            print(f"fedvl: interrupted by {signal.Signals(signum).name} before the run started", file=sys.stderr)
        else:
            print(f"fedvl: interrupted by {signal.Signals(signum).name}; status interrupted in {run_dir}; continue "
                  f"from round {resume_round(run_dir)} with `fedvl run --resume {run_dir}`", file=sys.stderr)
        return 128 + signum
    except (FloatingPointError, RuntimeError) as e:
        # training diverged or every update was rejected: say so in one line, keep the evidence
        print(f"fedvl: error: {one_line(str(e))} (partial results, status: failed, in {run_dir})", file=sys.stderr)
        return 1
    except Exception as e:
        if not _is_write_failure(e):
            raise
        if not has_status(run_dir):  # before the run began (e.g. the feature cache): nothing to resume
            print(f"fedvl: error: {one_line(str(e))}", file=sys.stderr)
            return EXIT_USAGE
        # the disk filled up or went read-only mid-run: the newest committed checkpoint is intact
        print(f"fedvl: error: cannot write results: {one_line(str(e))} (status: failed, in {run_dir}; after freeing "
              f"space continue from round {resume_round(run_dir)} with `fedvl run --resume {run_dir}`)",
              file=sys.stderr)
        return 1
    return 0


def _is_write_failure(e: BaseException) -> bool:
    """A file-system failure while writing (safetensors reports its I/O errors as SafetensorError)."""
    return isinstance(e, OSError) or type(e).__name__ == "SafetensorError"


def resumable(run_dir) -> bool:
    """``run --resume`` / ``serve --resume``: is there a run to continue in ``run_dir``? False (said
    here) when it is complete; a folder without a config is refused; a damaged status file does not
    stop a resume."""
    from fedvl.runfolder import read_status
    from fedvl.schema import ConfigError

    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a fedvl results folder (no config.yaml)")
    state = (read_status(run_dir) or {}).get("state")
    if state == "complete":
        print(f"fedvl: {run_dir} is already complete; nothing to resume")
    return state != "complete"


def _resume(ns) -> int:
    """``fedvl run --resume RESULTS_DIR [run.device=... run.threads=...]``: the folder's own config;
    only where it runs may change (state is saved device-free, so a run moves between devices)."""
    from pathlib import Path

    from fedvl.config import load_config
    from fedvl.models.backbones import ModelUnavailableError, check_available
    from fedvl.schema import ConfigError

    moves = [a for a in ns.args if a.split("=", 1)[0] in ("run.device", "run.threads")]
    if len(moves) != len(ns.args) or ns.overwrite:
        raise ConfigError("--resume takes only the results folder (and run.device= / run.threads=): its "
                          "config.yaml decides everything else")
    ns.overwrite = False
    run_dir = Path(ns.resume)
    if not resumable(run_dir):
        return 0
    cfg = load_config(run_dir / "config.yaml", moves)
    try:
        check_available(cfg.model)
    except ModelUnavailableError as e:
        print(f"fedvl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return _run_and_report(cfg, run_dir, ns, resume=True)

