"""The fedvl commands, one module each: its help text, ``add_parser(sub)`` (which sets the subparser's
``handler`` default, what ``fedvl.cli.main`` calls) and ``main(ns)``; and what several commands share.

Heavy imports (torch, flwr) stay inside the command functions: ``fedvl --help`` and ``fedvl join`` start
without them.
"""

from __future__ import annotations

EXIT_USAGE = 2


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]``: the config file, if the first argument is not an override, and the overrides."""
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
