"""fedvl command line.

    fedvl run [CONFIG] [key=value ...]    run one experiment (no CONFIG: the embedded default)
    fedvl run --resume RESULTS_DIR        continue a stopped run from its last complete round
    fedvl compare [CONFIG] --algorithms A,B-PEFT,... --seeds 0,1,2   paper-style comparison
    fedvl show-config [CONFIG] [key=value ...]   print the resolved configuration
    fedvl algorithms                      list the registered algorithms
    fedvl serve [CONFIG] [key=value ...]  Flower deployment: SuperLink + the fedvl ServerApp
    fedvl join --server HOST:PORT --partition i   Flower deployment: one client node
"""

from __future__ import annotations

import argparse
import sys

import fedvl

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

A run commits a checkpoint after every round; `fedvl run --resume RESULTS_DIR`
continues a killed run from its last complete round with the folder's config.

Sections and keys: see `fedvl show-config`.
"""


COMPARE_HELP = """\
Run every method on the same clients with the same seeds and write a paper-style
table (compare.md / compare.json: one row per method, one column per client plus
the average, mean ± std over seeds, trainable and communicated parameters) and
compare.png (average accuracy per round per method). Finished runs are reused
and a half-done run continues from its last checkpoint, so an interrupted
comparison resumes. The folder records each method's settings
(compare-settings.json): rerunning it with other settings is refused unless
--overwrite, which runs every method and seed afresh. Methods must be of one
family (parameter exchange, or the FedMMKT knowledge family), each named once.

  fedvl compare --benchmark domain --algorithms feddat,fedavg-adapter,fedavg-lora,local,centralized --seeds 0,1,2
"""


SERVE_HELP = """\
Run an experiment on a real Flower deployment. Starts a Flower SuperLink on
--host:--port, submits the experiment (the fedvl ServerApp), waits until it ends
and stops the SuperLink. Start one `fedvl join` per client, on the client
machines (or here), with --partition 0..N-1. The results folder is the same as
`fedvl run` writes.

  fedvl serve configs/task-feddat.yaml --port 9092 \\
      --ssl-certfile server.pem --ssl-keyfile server.key --ssl-ca-certfile ca.pem
  fedvl join --server SERVER:9092 --partition 0 --root-certificates ca.pem      # on client 0

Without certificates pass --insecure on both sides (no encryption: for trusted networks only).
With TLS, --auth-keys DIR admits only the nodes whose public key (DIR/*.pub, e.g. from
`ssh-keygen -t ecdsa -b 384 -N '' -f node0`) is listed; they join with --auth-key node0.
run.secagg=true aggregates with Flower's SecAgg+: the server sees only the sum of the updates.
Every algorithm deploys but the pooled references (centralized, kt-centralized); for the FedMMKT
family (`fedvl serve configs/fedmmkt.yaml`) the server alone holds the text-to-image model, and
partition i is the i-th of fedmmkt.domains / fedmmkt.archs.
The server commits a checkpoint every round; if it dies, `fedvl serve --resume results/NAME`
(same port and TLS options) continues from the last complete round with the nodes still
running (or restarted with the same --state-dir).
"""

JOIN_HELP = """\
Join a Flower deployment started by `fedvl serve` as the client holding
partition --partition (0..N-1 in the experiment's client order): starts a Flower
SuperNode running the fedvl ClientApp. Client-local state (e.g. FedDAT's A_C)
(or a FedMMKT client's task model) stays in --state-dir and never leaves this machine. Runs until the run ends: once
the SuperLink has been gone for --wait-s seconds it says so and exits 0 (or Ctrl-C).
Gives up (exit 1) when no Flower SuperLink answers at --server for --wait-s seconds at the
start (an open port is not enough), and at once when it answers only over the other security
(TLS vs --insecure); stops (exit 2) when the run has no partition --partition. If the server restarts
(`fedvl serve --resume`) within --wait-s, the node joins it again and its clients go on
from their state as of the server's last checkpoint. A warm worker process keeps this
node's model and data in memory between messages.
"""


PRETRAIN_HELP = """\
Pretrain the server's text-to-image model (a diffusers UNet conditioned on the real
MiniLM-L6 text encoder) on the public source domain of the synthetic world, with the
t2i.* settings of CONFIG, and report its loss curve and the source-domain judge
accuracy of its samples. Seeded: the same settings give the same weights. The result
is cached under run.cache_dir/t2i/<key> (key = hash of the settings); FedMMKT runs
use the artifact shipped in the package when their settings match it, else the cache,
else pretrain first.

  fedvl pretrain t2i configs/fedmmkt.yaml
  fedvl pretrain t2i configs/fedmmkt.yaml --force --out t2i.safetensors   (reproduce the shipped artifact)
"""


PRETRAIN_VL_HELP = """\
fedvl pretrain vl: cross-modal pretraining of the default model, as ViLT was pretrained.

Trains the connector, a low-rank delta on the MiniLM layers and their LayerNorms with
image-text matching (hard negatives: one colour, shape, size, position or count changed)
and masked language modelling, on a public caption corpus the synthetic world renders in
a style no benchmark client uses (captions only, never a benchmark's questions). Masking
favours the words only the image decides (colour, shape, size, position, number:
mlm_grounded_prob). Writes <cache_dir>/vl/<key>.safetensors (float16; cache_dir=
results/cache) with a JSON report, a PNG of the loss and held-out accuracy curves; key =
hash of the settings. Grounding is reported as held-out accuracy on masked image-decided
words with the caption's own image against another image. Resumable: rerun the same command
after a kill. Deterministic for a seed. Settings: key=value (see fedvl.models.vlbase.
VLPretrainConfig), e.g. steps=1500 corpus_images=4000 model=tiny.

  fedvl pretrain vl                                  (reproduce the shipped base)
  fedvl pretrain vl steps=300 --out my-base.safetensors
  fedvl run model.base_weights=my-base.safetensors   (fine-tune on it)
"""


def _pretrain_vl(ns) -> int:
    import shutil

    import torch
    from rich.console import Console

    from fedvl.config import load_section
    from fedvl.io import atomic_write
    from fedvl.models.vlbase import VLPretrainConfig, pretrain_key, shipped_path
    from fedvl.models.vlpretrain import cached_base, pretrain
    from fedvl.runtime.progress import Progress

    path, overrides = _split_args(ns.args)
    cfg = load_section(VLPretrainConfig, path, overrides)
    from fedvl.config import ConfigError
    from fedvl.engine.device import DeviceError, resolve_device
    from fedvl.runfolder import check_writable

    outs = _out_files(ns, (".json", ".png"))
    check_writable(cfg.cache_dir, "cache_dir")

    try:  # a GPU that is not there: one line, before anything is built
        resolve_device(cfg.device)
    except DeviceError as e:
        raise ConfigError(str(e).replace("run.device", "device")) from None
    if cfg.model == "default":
        from fedvl.models.backbones import ModelUnavailableError, minilm_dir, mobilenet_weights

        try:
            minilm_dir(), mobilenet_weights()
        except ModelUnavailableError as e:
            print(f"fedvl: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    torch.set_num_threads(cfg.threads)
    console = Console(soft_wrap=True)
    progress = Progress(console, 1, enabled=not ns.quiet)
    key = pretrain_key(cfg)

    def step(done: int, total: int, loss: float) -> None:
        progress.client_start(0, "VL pretraining", 1, 1)
        progress.step(done, total, loss)
        if not progress.live and (done % 100 == 0 or done == total):
            console.print(f"step {done}/{total}: loss {loss:.4f}")

    found = None if ns.force else cached_base(cfg, progress.status)
    try:
        if found:
            progress.status(f"already pretrained: {found[0]} (--force to redo)")
            out, meta = found
        else:
            progress.status(f"VL pretraining {key}: {cfg.steps} steps of batch {cfg.batch_size}")
            out, meta = pretrain(cfg, progress.status, step, force=ns.force)
    finally:
        progress.close()
    console.print(f"held-out image-text matching accuracy: {100 * meta['held_out_itm_acc']:.1f}% (chance 50%), "
                  f"masked-word accuracy: {100 * meta['held_out_mlm_acc']:.1f}%")
    if "train_seconds" in meta:
        console.print(f"training took {meta['train_seconds']:.0f}s; report {out.with_suffix('.json')}, "
                      f"curves {out.with_suffix('.png')}")
    console.print(f"weights: {out}" + ("  (the shipped base)" if shipped_path(cfg.model).name == out.name else ""))
    if outs:
        for src, dst in zip((out, out.with_suffix(".json"), out.with_suffix(".png")), outs):
            atomic_write(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
        console.print(f"written: {outs[0]} (use it with model.base_weights={outs[0]}), report {outs[1]}, "
                      f"curves {outs[2]}")
    return 0


def _out_files(ns, reports: tuple[str, ...]) -> list | None:
    """``--out PATH``: the files written there, PATH itself and its reports beside it (PATH with each
    suffix of ``reports``, where the loaders look for them). Refused in one line before any work when
    one of them exists (unless --overwrite) or is PATH itself: a user's files are never replaced
    unasked."""
    from pathlib import Path

    from fedvl.config import ConfigError
    from fedvl.runfolder import check_writable

    if not ns.out:
        return None
    dest = Path(ns.out)
    if dest.is_dir() or dest.name in ("", ".", ".."):
        raise ConfigError(f"--out {ns.out} is a folder; give the weights file's name")
    files = [dest] + [dest.with_suffix(r) for r in reports]
    if len(set(files)) < len(files):
        raise ConfigError(f"--out {dest}: its report would take the same name; name the weights with another "
                          f"suffix, e.g. --out {dest.with_suffix('.safetensors')}")
    taken = [str(f) for f in files if f.exists() or f.is_symlink()]
    if any(f.is_dir() for f in files):
        raise ConfigError(f"--out {dest}: {next(str(f) for f in files if f.is_dir())} is a folder")
    if taken and not ns.overwrite:
        raise ConfigError(f"--out {dest} would replace {', '.join(taken)}; give --overwrite to replace "
                          f"{'them' if len(taken) > 1 else 'it'}, or another name")
    check_writable(dest.parent, "--out")
    return files


def _pretrain(ns) -> int:
    from pathlib import Path

    from rich.console import Console

    from fedvl.config import load_config
    from fedvl.generation.pretrain import load_or_pretrain, save_generator
    from fedvl.runtime.progress import Progress

    path, overrides = _split_args(ns.args)
    cfg = load_config(path, overrides)
    from fedvl.runfolder import check_writable

    outs = _out_files(ns, (".json",))
    check_writable(cfg.run.cache_dir, "run.cache_dir")
    import torch

    torch.set_num_threads(cfg.run.threads)
    console = Console()
    progress = Progress(console, 1, enabled=not ns.quiet)

    def step(done: int, total: int, loss: float) -> None:
        progress.client_start(0, "pretraining", 1, 1)
        progress.step(done, total, loss)
        if not progress.live and (done % 100 == 0 or done == total):
            console.print(f"step {done}/{total}: loss {loss:.4f}")

    try:
        from fedvl.engine.device import resolve_device

        gen, meta = load_or_pretrain(cfg.t2i, cfg.fedmmkt, Path(cfg.run.cache_dir), progress.status, step,
                                     force=ns.force, device=resolve_device(cfg.run.device))
    finally:
        progress.close()
    if "loss" in meta:
        losses = meta["loss"]
        k = max(1, len(losses) // 10)
        curve = [sum(losses[i:i + k]) / len(losses[i:i + k]) for i in range(0, len(losses), k)]
        console.print("loss curve (mean per tenth): " + " ".join(f"{v:.4f}" for v in curve))
    if "source_fidelity" in meta:
        f = meta["source_fidelity"]
        console.print(f"source-domain judge accuracy on generated images: {100 * f['judge_acc']:.1f}% "
                      f"(real images: {100 * f['judge_real_acc']:.1f}%), feature distance {f['feature_distance']:.2f}")
    if "pretrain_seconds" in meta:
        console.print(f"pretraining took {meta['pretrain_seconds']:.0f}s")
    if outs:
        save_generator(gen, outs[0], meta)
        console.print(f"written: {outs[0]} (use it with t2i.weights={outs[0]}), report {outs[1]}")
    return 0


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
    run.add_argument("--resume", metavar="RESULTS_DIR",
                     help="continue a stopped run from its last complete round, with the folder's config.yaml")
    run.add_argument("--accept-config-change", action="store_true",
                     help="with --resume: continue although config.yaml changed since the last checkpoint")
    cmp_ = sub.add_parser("compare", help="run several methods x seeds on the same clients, paper-style table",
                          description=COMPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp_.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    cmp_.add_argument("--algorithms", "--methods", dest="methods", required=True,
                      help="comma-separated methods: ALGORITHM or ALGORITHM-PEFT (e.g. feddat,fedavg-adapter,fedavg-lora,local)")
    cmp_.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    cmp_.add_argument("--benchmark", help="shortcut for data.benchmark=...")
    cmp_.add_argument("--name", help="folder under run.output_dir (default: compare-<benchmark>)")
    cmp_.add_argument("--overwrite", action="store_true",
                      help="run every method and seed afresh, also in a folder that ran other settings")
    cmp_.add_argument("--quiet", action="store_true", help="no live progress bars")
    show = sub.add_parser("show-config", help="print the resolved configuration (defaults + file + overrides)")
    show.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    sub.add_parser("algorithms", help="list the registered algorithms")
    srv = sub.add_parser("serve", help="Flower deployment: start a SuperLink and run the experiment on it",
                         description=SERVE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    srv.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    srv.add_argument("--host", default="0.0.0.0", help="address the SuperLink listens on (default: all)")
    srv.add_argument("--port", type=int, default=9092, help="SuperLink port for nodes and the run (default: 9092)")
    srv.add_argument("--ssl-certfile", help="TLS: the SuperLink's certificate (PEM)")
    srv.add_argument("--ssl-keyfile", help="TLS: the SuperLink's private key (PEM)")
    srv.add_argument("--ssl-ca-certfile", help="TLS: the CA certificate that signed it (PEM)")
    srv.add_argument("--insecure", action="store_true", help="no TLS (required when no certificates are given)")
    srv.add_argument("--overwrite", action="store_true", help="replace an existing results folder of the same name")
    srv.add_argument("--auth-keys", metavar="DIR",
                     help="node authentication (needs TLS): only nodes whose public key (*.pub, OpenSSH EC) is in DIR "
                          "may join")
    srv.add_argument("--resume", metavar="RESULTS_DIR",
                     help="continue a deployed run whose server stopped, from its last complete round, with the "
                          "folder's config.yaml; the nodes (still running, or restarted with the same --state-dir) "
                          "keep their clients' state")
    pre = sub.add_parser("pretrain", help="pretrain the VL base (vl) or the FedMMKT server generator (t2i)",
                         description=PRETRAIN_VL_HELP + "\n" + PRETRAIN_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    pre.add_argument("what", choices=["vl", "t2i"],
                     help="vl: the default model's cross-modal pretraining (ITM + MLM); t2i: the server "
                          "text-to-image model")
    pre.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    pre.add_argument("--out", help="also write the weights to this file, the report beside it (same name, .json; "
                                   "vl also the curves, .png)")
    pre.add_argument("--overwrite", action="store_true", help="let --out replace existing files of those names")
    pre.add_argument("--force", action="store_true", help="pretrain even if matching weights exist")
    pre.add_argument("--quiet", action="store_true", help="no live progress bar")
    jn = sub.add_parser("join", help="Flower deployment: run a client node for one partition",
                        description=JOIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    jn.add_argument("--server", required=True, help="the SuperLink, HOST:PORT")
    jn.add_argument("--partition", type=int, required=True, help="which client this node is (0..N-1)")
    jn.add_argument("--state-dir", default=None, help="client-local state folder (default: ~/.cache/fedvl/node-<i>)")
    jn.add_argument("--root-certificates", help="TLS: the CA certificate that signed the SuperLink's (PEM)")
    jn.add_argument("--insecure", action="store_true", help="no TLS (only if the server was started with --insecure)")
    jn.add_argument("--port", type=int, default=None, help="local port of this node's ClientApp API (default: free)")
    jn.add_argument("--wait-s", type=float, default=300.0,
                    help="keep retrying this long while the SuperLink is unreachable or refuses this node; once "
                         "it has been gone this long after the node joined, the run has ended (default: 300)")
    jn.add_argument("--device", default="",
                    help="where this node's client computes: cpu, cuda, cuda:N (default: the run's run.device)")
    jn.add_argument("--auth-key", metavar="KEY",
                    help="node authentication: this node's private key (OpenSSH EC), whose .pub the server lists")
    jn.add_argument("--poll-s", type=float, default=0.2,
                    help="how often an idle node asks the SuperLink for its next message (Flower's own SuperNode "
                         "waits 3 s, most of a short round); raise it for many nodes on one SuperLink (default: 0.2)")
    return p


def _serve(ns, path, overrides) -> int:
    from pathlib import Path

    from fedvl.config import ConfigError, load_config
    from fedvl.experiment import run_dir_for
    from fedvl.runtime.deploy import TLS, serve

    if ns.resume:
        if path or overrides or ns.overwrite:
            raise ConfigError("serve --resume takes only the results folder: its config.yaml decides the run")
        run_dir = Path(ns.resume)
        if not _resumable(run_dir):
            return 0
        cfg = load_config(run_dir / "config.yaml", [])
    else:
        cfg = load_config(path, overrides + ["run.runtime=flower-deploy"])  # what this run is, in its config.yaml
    certs = [ns.ssl_certfile, ns.ssl_keyfile, ns.ssl_ca_certfile]
    if any(certs) and not all(certs):
        raise ConfigError("TLS needs all three of --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile")
    if not any(certs) and not ns.insecure:
        raise ConfigError("give TLS certificates (--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile) or --insecure")
    tls = TLS(Path(certs[0]), Path(certs[1]), Path(certs[2])).check() if all(certs) else None
    if not ns.resume:
        run_dir = run_dir_for(cfg, overwrite=ns.overwrite)
    code = serve(cfg, run_dir, ns.host, ns.port, tls, auth_keys=Path(ns.auth_keys) if ns.auth_keys else None,
                 resume=bool(ns.resume))
    print(f"results: {run_dir}")
    return code


def _join(ns) -> int:
    from pathlib import Path

    from fedvl.config import ConfigError
    from fedvl.runtime.deploy import join

    if not ns.root_certificates and not ns.insecure:
        raise ConfigError("give --root-certificates CA.pem (TLS) or --insecure")
    state = Path(ns.state_dir) if ns.state_dir else Path.home() / ".cache" / "fedvl" / f"node-{ns.partition}"
    return join(ns.server, ns.partition, state, Path(ns.root_certificates) if ns.root_certificates else None, ns.port,
                Path(ns.auth_key) if ns.auth_key else None, ns.wait_s, ns.device, ns.poll_s)


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def one_line(text: str) -> str:
    """A user error is one line, even when it quotes a key with a line break in it."""
    return " ".join(text.splitlines())


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops at once and says where to resume."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame):
    raise Terminated(signum)


def _run_and_report(cfg, run_dir, ns, resume: bool = False) -> int:
    import signal

    from fedvl.experiment import resume_round, run_experiment
    from fedvl.models.backbones import ModelUnavailableError

    try:
        run_experiment(cfg, run_dir, progress_enabled=not ns.quiet, resume=resume, overwrite=ns.overwrite,
                       accept_config_change=ns.accept_config_change)
    except ModelUnavailableError as e:
        print(f"fedvl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        if not (run_dir / "status.json").is_file():  # stopped before the run had a folder
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
        if not (run_dir / "status.json").is_file():  # before the run began (e.g. the feature cache): nothing to resume
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


def _resumable(run_dir) -> bool:
    """``run --resume`` / ``serve --resume``: is there a run to continue in ``run_dir``? False (said
    here) when it is complete; a folder without a config is refused; a damaged status file does not
    stop a resume."""
    import json

    from fedvl.config import ConfigError

    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a fedvl results folder (no config.yaml)")
    try:
        state = json.loads((run_dir / "status.json").read_text()).get("state")
    except (OSError, ValueError, AttributeError):
        state = None
    if state == "complete":
        print(f"fedvl: {run_dir} is already complete; nothing to resume")
    return state != "complete"


def _resume(ns) -> int:
    """``fedvl run --resume RESULTS_DIR [run.device=... run.threads=...]``: the folder's own config;
    only where it runs may change (state is saved device-free, so a run moves between devices)."""
    from pathlib import Path

    from fedvl.config import ConfigError, load_config
    from fedvl.models.backbones import ModelUnavailableError, check_available

    moves = [a for a in ns.args if a.split("=", 1)[0] in ("run.device", "run.threads")]
    if len(moves) != len(ns.args) or ns.overwrite:
        raise ConfigError("--resume takes only the results folder (and run.device= / run.threads=): its "
                          "config.yaml decides everything else")
    ns.overwrite = False
    run_dir = Path(ns.resume)
    if not _resumable(run_dir):
        return 0
    cfg = load_config(run_dir / "config.yaml", moves)
    try:
        check_available(cfg.model)
    except ModelUnavailableError as e:
        print(f"fedvl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return _run_and_report(cfg, run_dir, ns, resume=True)


def main(argv: list[str] | None = None) -> int:
    from fedvl.config import ConfigError

    parser = _parser()
    ns, extra = parser.parse_known_args(argv)
    # key=value overrides after a flag (`fedvl run CONFIG --quiet a.b=1`) are still overrides
    if extra and hasattr(ns, "args") and all("=" in e and not e.startswith("-") for e in extra):
        ns.args = list(ns.args) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if ns.command in ("run", "compare", "serve"):
        import signal

        signal.signal(signal.SIGTERM, _on_signal)  # a scheduler's or `kill`'s stop: status interrupted, not running
    try:
        if ns.command == "algorithms":
            from fedvl.algorithms import registry

            for name, algo in sorted(registry().items()):
                print(f"{name:<14} {algo.summary}")
            return 0
        if ns.command == "pretrain":
            return _pretrain_vl(ns) if ns.what == "vl" else _pretrain(ns)
        if ns.command == "join":
            return _join(ns)
        from fedvl.config import dump_config, load_config

        path, overrides = _split_args(ns.args)
        if ns.command == "serve":
            return _serve(ns, path, overrides)
        if ns.command == "compare":
            from fedvl.experiment import run_comparison

            if ns.benchmark:
                overrides = [f"data.benchmark={ns.benchmark}"] + overrides
            try:
                seeds = [int(s) for s in ns.seeds.split(",") if s != ""]
            except ValueError:
                raise ConfigError(f"--seeds must be comma-separated integers, got {ns.seeds!r}") from None
            from fedvl.runfolder import check_name

            check_name(ns.name or "", "--name")  # one folder under run.output_dir, like run.name
            methods = [m for m in ns.methods.split(",") if m]
            if not methods or not seeds:
                raise ConfigError("--algorithms and --seeds must name at least one method and one seed")
            from fedvl.algorithms import exchange_of

            # a knowledge-transfer comparison is not on a data.benchmark: its own folder name
            bench = "fedmmkt" if all(exchange_of(m) == "knowledge" for m in methods) else load_config(path, overrides).data.benchmark
            run_comparison(path, overrides, methods, seeds, ns.name or f"compare-{bench}",
                           progress_enabled=not ns.quiet, overwrite=ns.overwrite)
            return 0
        if ns.command == "run" and ns.resume:
            return _resume(ns)
        if ns.command == "run" and ns.accept_config_change:
            raise ConfigError("--accept-config-change goes with --resume RESULTS_DIR")
        cfg = load_config(path, overrides)
        if ns.command == "show-config":
            print(dump_config(cfg), end="")
            return 0
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
    except ConfigError as e:
        print(f"fedvl: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:  # outside a run's own handling (before it started, or in `compare`)
        import signal

        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        print(f"fedvl: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except (FloatingPointError, RuntimeError) as e:  # from `compare`; `run` reports its folder above
        from fedvl.models.backbones import ModelUnavailableError

        print(f"fedvl: error: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, ModelUnavailableError) else 1
