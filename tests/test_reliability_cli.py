"""Reliability from the outside: --resume errors, and the robustness / privacy benchmarks end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

from fedvl.cli import main

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("args,message", [
    (["--resume", "nowhere"], "nowhere is not a fedvl results folder (no config.yaml)"),
    (["--resume", "run1", "algorithm.rounds=3"], "--resume takes only the results folder"),
])
def test_resume_bad_input_one_line_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "config.yaml").write_text("algorithm:\n  rounds: 2\n")
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_resume_with_a_broken_config_is_a_config_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("algorithm:\n  rounds: many\n")
    assert main(["run", "--resume", "r"]) == 2
    assert "algorithm.rounds: expected an integer" in capsys.readouterr().err


def _bench(script, args, tmp_path):
    env = dict(os.environ, FEDVL_BENCH_OUT=str(tmp_path / "bench.json"))
    r = subprocess.run([sys.executable, str(BENCH / script), *args, *TINY, f"run.cache_dir={tmp_path / 'c'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return json.loads((tmp_path / "bench.json").read_text()), (tmp_path / "bench.md").read_text()


@pytest.mark.slow
def test_robustness_benchmark_smoke(tmp_path):
    out, table = _bench("robustness.py", ["--attacks", "none,sign_flip,scaled", "--defences", "mean,median,krum"],
                        tmp_path)
    assert set(out["rows"]) == {"none", "sign_flip", "scaled"}
    assert all(set(r) == {"mean", "median", "krum"} for r in out["rows"].values())
    assert out["rows"]["none"]["mean"]["attackers"] == []
    assert len(out["rows"]["sign_flip"]["median"]["attackers"]) == 1  # 0.25 of 4 clients
    for cells in out["rows"].values():
        assert all(0.0 <= c["acc_honest"] <= 1.0 for c in cells.values())
    # a sign-flipping client drags plain FedAvg below the clean run; the median resists it
    assert out["rows"]["sign_flip"]["mean"]["acc_honest"] < out["rows"]["none"]["mean"]["acc_honest"]
    assert out["rows"]["sign_flip"]["median"]["acc_honest"] > out["rows"]["sign_flip"]["mean"]["acc_honest"]
    assert table.startswith("| attack | mean | median | krum |") and "| sign_flip |" in table


@pytest.mark.slow
def test_privacy_cost_benchmark_smoke(tmp_path):
    out, table = _bench("privacy_cost.py", ["--noise", "0.5,4"], tmp_path)
    rows = out["rows"]
    assert list(rows) == ["no DP", "DP z=0.5", "DP z=4"]
    assert rows["no DP"]["epsilon"] is None
    assert rows["DP z=0.5"]["epsilon"] > rows["DP z=4"]["epsilon"] > 0  # more noise, less privacy spent
    assert "| DP z=4 |" in table


def test_interrupted_comparison_resumes_a_half_done_run_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    import shutil

    from fedvl.experiment import run_comparison
    from fedvl.report.history import History
    from fedvl.runfolder import write_status
    from fedvl.rounds.checkpoint import checkpoint_dirs

    monkeypatch.chdir(tmp_path)
    args = dict(config_path=None, overrides=TINY + ["algorithm.rounds=3"], methods=["fedavg", "local"], seeds=[0],
                name="cmp", progress_enabled=False)
    out = run_comparison(**args)
    import json as _json

    averages = {m: r["average"] for m, r in _json.loads((out / "compare.json").read_text()).items()}
    run = out / "local" / "seed0"
    final = History.read(run)[-1]["eval"]
    # as if killed during round 3: status running, newest checkpoint round 2
    write_status(run, "running")
    shutil.rmtree(checkpoint_dirs(run)[0][1])
    capsys.readouterr()
    run_comparison(**args)
    cap = capsys.readouterr()
    assert "fedavg seed 0: already complete" in cap.out and "resuming from round 2 of 3" in cap.err
    assert [r["round"] for r in History.read(run)] == [1, 2, 3] and History.read(run)[-1]["eval"] == final
    # the same table numbers (seconds per round aside: the resumed round was timed again)
    assert {m: r["average"] for m, r in _json.loads((out / "compare.json").read_text()).items()} == averages
