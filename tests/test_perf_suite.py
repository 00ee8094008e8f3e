"""The performance suite (benchmarks/run.py) runs end to end on the tiny model and its figures make sense."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.mark.slow
def test_suite_quick_run_writes_every_figure_it_ran(tmp_path):
    env = dict(os.environ, FEDVL_BENCH_OUT=str(tmp_path / "out"))
    r = subprocess.run([sys.executable, str(SUITE), "--quick", "--only", "1,2,4,7"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "out" / "suite.json").read_text())["results"]
    assert set(res) == {"1", "2", "4", "7"} and not any("error" in v for v in res.values()), res
    # 1: the clients' compute is part of the wall time, so the ratio is at least 1
    assert res["1"]["value"] >= 1.0 and res["1"]["wall_s"] >= res["1"]["train_compute_s"] + res["1"]["eval_compute_s"]
    assert res["2"]["value"] > 0 and set(res["2"]["samples_per_s"]) == {"fedvl", "hand"}
    # 4: full fine-tuning sends everything, the others a fraction; float16 exactly halves
    rel = res["4"]["relative_to_full"]
    assert rel["full"] == 1.0 and all(0 < v < 1 for k, v in rel.items() if k != "full")
    assert res["4"]["float16_over_float32"] == 0.5
    # 7: a first step was taken, after the imports and the setup
    for which in ("cold", "warm"):
        s = res["7"][which]
        assert 0 < s["imports_and_cli_s"] < s["to_first_step_s"] and s["setup_s"] > 0
    table = (tmp_path / "out" / "suite.md").read_text()
    assert "| 1 | framework overhead |" in table and "| 7 | startup |" in table


def test_suite_refuses_an_unknown_figure(tmp_path):
    r = subprocess.run([sys.executable, str(SUITE), "--only", "9"], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, FEDVL_BENCH_OUT=str(tmp_path / "out")), timeout=300)
    assert r.returncode == 2 and "no figure 9" in r.stderr and not (tmp_path / "out").exists()
