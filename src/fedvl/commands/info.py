"""``fedvl show-config`` and ``fedvl algorithms``: what a run would use, without running anything."""

from __future__ import annotations

from fedvl.commands import split_args


def add_parser(sub) -> None:
    show = sub.add_parser("show-config", help="print the resolved configuration (defaults + file + overrides)")
    show.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    show.set_defaults(handler=show_config)
    sub.add_parser("algorithms", help="list the registered algorithms").set_defaults(handler=algorithms)


def show_config(ns) -> int:
    from fedvl.config import load_config
    from fedvl.schema import dump_config

    print(dump_config(load_config(*split_args(ns.args))), end="")
    return 0


def algorithms(ns) -> int:
    from fedvl.algorithms import registry

    for name, algo in sorted(registry().items()):
        print(f"{name:<14} {algo.summary}")
    return 0
