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


def set_status(run_dir: Path, state: str, **extra: Any) -> None:
    write_json_atomic(run_dir / "status.json", {"state": state, **extra})
