"""Run records: one JSON line per round (flushed as soon as the round ends), and
the run's status file, so a crashed run is never mistaken for a finished one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fedvl.io import atomic_write


def write_json_atomic(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, default=float)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class History:
    """``metrics.jsonl``, and the experiment trackers (``run.trackers``) that mirror it."""

    def __init__(self, run_dir: Path, trackers=None):
        self.path = run_dir / "metrics.jsonl"
        self.rounds: list[dict[str, Any]] = []
        self.trackers = trackers

    def append(self, record: dict[str, Any]) -> None:
        self.rounds.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.trackers is not None:  # after the file: a tracker can never cost a round's record
            self.trackers.log_round(record)

    def reset(self, records: list[dict[str, Any]]) -> None:
        """Replace the file by ``records`` (a resumed run: drop rounds after its checkpoint)."""
        self.rounds = list(records)
        text = "".join(json.dumps(r, default=float) + "\n" for r in self.rounds)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        if self.trackers is not None:  # a resumed run's trackers start fresh: give them the kept rounds
            for r in self.rounds:
                self.trackers.log_round(r)

    def rounds_with_eval(self) -> list[dict[str, Any]]:
        return [r for r in self.rounds if "eval" in r]

    @staticmethod
    def read(run_dir: Path) -> list[dict[str, Any]]:
        path = Path(run_dir) / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def client_rounds(rounds: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Per client (in the order first seen), the evaluated rounds it reported scores in. Any client
    may be absent from any round (a deployed node that froze, restarted or timed out, then came
    back), so no round's client set stands for the run's."""
    out: dict[str, list[int]] = {}
    for r in rounds:
        for cid in r.get("eval", {}):
            out.setdefault(cid, []).append(r["round"])
        for cid in r.get("eval_dropped", {}):
            out.setdefault(cid, [])
    return out


def missed_rounds(rounds: list[dict[str, Any]]) -> dict[str, list[int]]:
    """The clients absent from some evaluated round, each with those rounds (rounds that evaluated
    nobody by design, ``run.eval_every``, are no one's absence)."""
    evaluated = [r["round"] for r in rounds if "eval" in r or "eval_dropped" in r]
    missed = {cid: [x for x in evaluated if x not in got] for cid, got in client_rounds(rounds).items()}
    return {cid: m for cid, m in missed.items() if m}


def spans(rounds: list[int]) -> str:
    """``[2, 3, 5]`` -> ``"rounds 2-3, 5"``."""
    runs: list[list[int]] = []
    for x in rounds:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return ("round " if len(rounds) == 1 else "rounds ") + text
