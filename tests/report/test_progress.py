"""Progress inside a round: which client trains and its steps on a terminal; one line per
round on a pipe or with --quiet."""

import io

from rich.console import Console

from fedvl.experiment import run_experiment
from fedvl.report.history import History
from fedvl.report.progress import Progress
from fedvl.transport.inprocess import build_federation, simulate


class Recorder:
    """Stands in for Progress and keeps every call, in order."""

    def __init__(self):
        self.calls = []
        self.first_step_unix = None

    def __getattr__(self, name):
        return lambda *a: self.calls.append((name, *a))


def test_the_round_loop_reports_each_client_its_steps_and_the_server_phases(tiny_cfg, tmp_path):
    fed = build_federation(tiny_cfg("algorithm.rounds=1", "algorithm.local_steps=3"), status=lambda s: None)
    rec = Recorder()
    simulate(fed, tmp_path, History(tmp_path), progress=rec)
    names = [c[0] for c in rec.calls]
    starts = [c for c in rec.calls if c[0] == "client_start"]
    assert [c[1:] for c in starts] == [(1, cid, i, 4) for i, cid in enumerate(fed.client_ids, 1)]
    # every client's three steps, counted against the client's total, between its start and the next
    steps = [c[1:3] for c in rec.calls if c[0] == "step"]
    assert steps == [(1, 3), (2, 3), (3, 3)] * 4
    assert names.index("phase") > max(i for i, n in enumerate(names) if n == "step")
    phases = [c[1] for c in rec.calls if c[0] == "phase"]
    assert phases == ["round 1 · aggregating 4 update(s)", "round 1 · evaluating 4 client(s)"]
    assert names[-1] == "round_end"


def test_terminal_shows_the_training_client_and_its_steps():
    buf = io.StringIO()
    p = Progress(Console(file=buf, force_terminal=True, width=120), total_rounds=3)
    p.client_start(2, "c1-sketch", 2, 4)
    p.step(3, 5, 0.25)
    p._bar.refresh()
    out = buf.getvalue()
    assert "round 2 · c1-sketch (2/4)" in out and "3/5" in out and "loss 0.250" in out
    p.phase("round 2 · evaluating 4 client(s)")
    p._bar.refresh()
    assert "round 2 · evaluating 4 client(s)" in buf.getvalue()
    p.close()


def _lines(tiny_cfg, tmp_path, console, enabled, name):
    run_experiment(tiny_cfg(f"run.name={name}"), tmp_path / name, console=console, progress_enabled=enabled)
    return console.file.getvalue()


def test_pipe_and_quiet_keep_one_line_per_round(tiny_cfg, tmp_path):
    piped = _lines(tiny_cfg, tmp_path, Console(file=io.StringIO(), width=120), True, "pipe")
    quiet = _lines(tiny_cfg, tmp_path, Console(file=io.StringIO(), force_terminal=True, color_system=None, width=120),
                   False, "quiet")
    for out in (piped, quiet):
        rounds = [line for line in out.splitlines() if line.startswith("round ")]
        assert len(rounds) == 2 and rounds[0].startswith("round   1: avg acc"), out
        assert "c0-photo (1/4)" not in out and "evaluating" not in out and "aggregating" not in out


def test_a_generative_models_round_line_shows_its_generation_time():
    out = io.StringIO()
    p = Progress(Console(file=out, width=200), 1, enabled=False)
    p.round_end({"round": 1, "avg": {"acc": 0.5, "bal_acc": 0.25}, "train_loss": 1.0, "time_s": 9.0,
                 "eval": {"a": {"acc": 0.5, "gen_seconds": 2.0}, "b": {"acc": 0.5, "gen_seconds": 1.5}}})
    p.round_end({"round": 2, "avg": {"acc": 0.5, "bal_acc": 0.25}, "train_loss": 1.0, "time_s": 9.0,
                 "eval": {"a": {"acc": 0.5}}})
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("· 9.0s (generating answers 3.5s)") and "generating" not in lines[1]
