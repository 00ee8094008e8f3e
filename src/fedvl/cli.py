"""fedvl command line.

    fedvl run [CONFIG] [key=value ...]    run one experiment (no CONFIG: the embedded default)
    fedvl show-config [CONFIG] [key=value ...]   print the resolved configuration
    fedvl algorithms                      list the registered algorithms
"""

from __future__ import annotations

import argparse
import sys

import fedvl  # noqa: F401  (sets thread wait policy before torch loads)

EXIT_USAGE = 2

RUN_HELP = """\
Run one federated experiment and write a results folder
(config.yaml, metrics.jsonl, summary.md/json, accuracy.png, status.json).

With no CONFIG the embedded default runs: FedAvg over bottleneck adapters on the
pretrained MiniLM-L6 + MobileNetV2 model, Domain benchmark, 4 clients.
Override any key with key=value, e.g.:

  fedvl run algorithm.name=local algorithm.rounds=5
  fedvl run configs/fedavg-adapter-domain.yaml model.peft=lora run.seed=1
  fedvl run model.name=tiny data.train_images=20          (seconds, for a smoke test)

Sections and keys: see `fedvl show-config`.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedvl", description="Federated fine-tuning of vision-language models.")
    p.add_argument("--version", action="version", version=f"fedvl {fedvl.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment", description=RUN_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("args", nargs="*", metavar="CONFIG|key=value",
                     help="an optional YAML config file first, then key=value overrides")
    run.add_argument("--overwrite", action="store_true", help="replace an existing results folder of the same name")
    run.add_argument("--quiet", action="store_true", help="no live progress bars")
    show = sub.add_parser("show-config", help="print the resolved configuration (defaults + file + overrides)")
    show.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    sub.add_parser("algorithms", help="list the registered algorithms")
    return p


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def main(argv: list[str] | None = None) -> int:
    from fedvl.config import ConfigError

    ns = _parser().parse_args(argv)
    try:
        if ns.command == "algorithms":
            from fedvl.algorithms import registry

            for name, algo in sorted(registry().items()):
                print(f"{name:<14} {algo.summary}")
            return 0
        from fedvl.config import dump_config, load_config

        path, overrides = _split_args(ns.args)
        cfg = load_config(path, overrides)
        if ns.command == "show-config":
            print(dump_config(cfg), end="")
            return 0
        from fedvl.experiment import run_dir_for, run_experiment
        from fedvl.models.backbones import ModelUnavailableError

        run_dir = run_dir_for(cfg, overwrite=ns.overwrite)
        try:
            run_experiment(cfg, run_dir, progress_enabled=not ns.quiet)
        except ModelUnavailableError as e:
            print(f"fedvl: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"fedvl: interrupted; partial results (status: failed) in {run_dir}", file=sys.stderr)
            return 130
        return 0
    except ConfigError as e:
        print(f"fedvl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
