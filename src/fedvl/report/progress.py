"""Progress display: live bars on a terminal, one line per round otherwise.

On a terminal a round shows which client trains (``round 2 · c1-sketch (2/4)``), its steps
with the running loss, then the server's phases (aggregating, evaluating); on a pipe or with
``--quiet`` nothing but one line per round is printed, as a log wants."""

from __future__ import annotations

import time
from typing import Any


class Progress:
    def __init__(self, console, total_rounds: int, enabled: bool = True):
        self.console = console
        self.live = enabled and console.is_terminal
        self._bar = None
        self.first_step_unix: float | None = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                     console=console, transient=False)
            self._rounds = self._bar.add_task("rounds", total=total_rounds, info="")
            self._steps = self._bar.add_task("client", total=1, info="")
            self._bar.start()

    def status(self, text: str) -> None:
        if self.live:
            self._bar.update(self._steps, description=text, completed=0, total=1, info="")
        else:
            self.console.print(text)

    def client_start(self, rnd: int, cid: str, index: int = 0, count: int = 0) -> None:
        """``index``/``count``: the client's place among the round's (0: unknown, e.g. Flower)."""
        if self.live:
            where = f" ({index}/{count})" if count else ""
            self._bar.update(self._steps, description=f"round {rnd} · {cid}{where}", completed=0, total=1,
                             info="training")

    def phase(self, text: str) -> None:
        """A step of the round with no steps to count (aggregating, evaluating): terminal only."""
        if self.live:
            self._bar.update(self._steps, description=text, completed=0, total=1, info="")

    def step(self, done: int, total: int, loss: float) -> None:
        if self.first_step_unix is None:  # startup time: `fedvl bench` reads it from summary.json
            self.first_step_unix = time.time()
        if self.live:
            self._bar.update(self._steps, completed=done, total=total, info=f"loss {loss:.3f}")

    def round_end(self, record: dict[str, Any]) -> None:
        avg = record["avg"]
        line = (f"round {record['round']:>3}: avg acc {100 * avg['acc']:.1f}% · bal acc "
                f"{100 * avg['bal_acc']:.1f}% · train loss {record['train_loss']:.3f} · {record['time_s']:.1f}s")
        gen = [m["gen_seconds"] for m in record.get("eval", {}).values() if "gen_seconds" in m]
        if gen:  # a generative model's evaluation decodes every answer: often most of the round
            line += f" (generating answers {sum(gen):.1f}s)"
        if record.get("rejected"):
            line += f" · rejected {len(record['rejected'])} update(s)"
        if self.live:
            self._bar.advance(self._rounds)
            self._bar.console.print(line)
        else:
            self.console.print(line)

    def close(self) -> None:
        if self.live:
            self._bar.stop()
