"""fedvl command line: builds the parser from the commands in fedvl.commands and dispatches.

    fedvl run [CONFIG] [key=value ...]    run one experiment (no CONFIG: the embedded default)
    fedvl run --resume RESULTS_DIR        continue a stopped run from its last complete round
    fedvl compare [CONFIG] --algorithms A,B-PEFT,... --seeds 0,1,2   paper-style comparison
    fedvl show-config [CONFIG] [key=value ...]   print the resolved configuration
    fedvl algorithms                      list the registered algorithms
    fedvl serve [CONFIG] [key=value ...]  Flower deployment: SuperLink + the fedvl ServerApp
    fedvl join --server HOST:PORT --partition i   Flower deployment: one client node
    fedvl pretrain vl|t2i [CONFIG|key=value ...]   pretrain the VL base or the FedMMKT generator
"""

from __future__ import annotations

import argparse
import sys

import fedvl
from fedvl.commands import EXIT_USAGE, Terminated, compare, info, join, one_line, pretrain, run, serve

# in the order `fedvl --help` lists them
COMMANDS = (run, compare, info, serve, pretrain, join)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedvl", description="Federated fine-tuning of vision-language models.")
    p.add_argument("--version", action="version", version=f"fedvl {fedvl.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def _on_signal(signum, frame):
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    from fedvl.schema import ConfigError

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
        return ns.handler(ns)
    except ConfigError as e:
        print(f"fedvl: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:  # outside a run's own handling (before it started, or in `compare`)
        import signal

        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        print(f"fedvl: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except (FloatingPointError, RuntimeError) as e:  # from `compare`; `run` reports its own folder
        from fedvl.models.backbones import ModelUnavailableError

        print(f"fedvl: error: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, ModelUnavailableError) else 1


def entry() -> int:
    """The ``fedvl`` console script (and ``python -m fedvl``): :func:`main`, then a quick exit. At exit
    Python's garbage collector walks every object torch and transformers made (about 1 s on a
    2-core machine, a fifth of a tiny run); frozen objects are skipped, while exit handlers, file
    flushes and module teardown run as usual. Only here, at the process's end: a test calling
    :func:`main` in its own process keeps collecting."""
    code = main()
    import gc

    gc.freeze()
    return code
