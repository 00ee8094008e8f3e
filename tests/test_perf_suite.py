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


def test_feddat_report_pairs_seeds_and_counts_feddats_two_steps_per_batch(tmp_path):
    """benchmarks/feddat_report.py on hand-made run folders: means and stds over seeds, FedDAT minus a
    baseline paired by seed over the seeds both have, steps doubled for FedDAT, unfinished runs skipped."""
    sys.path.insert(0, str(SUITE.parent))
    try:
        import feddat_report
    finally:
        sys.path.pop(0)

    def run(folder, method, seed, accs, state="complete", extra=None, kd=None):
        d = tmp_path / folder / method / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "status.json").write_text(json.dumps({"state": state}))
        ev = {f"c{i}": {"acc": a, "bal_acc": a / 2, **(extra or {})} for i, a in enumerate(accs)}
        tr = [{"c0": {"steps": 27, **(kd[r] if kd else {})}, "c1": {"steps": 27, **(kd[r] if kd else {})}}
              for r in range(2)]
        rows = [{"round": 1, "train": tr[0]}, {"round": 2, "train": tr[1], "eval": ev}]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))

    kd0 = [{"ce_shared": 1.0, "kd_shared": 0.25, "ce_dat": 0.5, "kd_dat": 0.125, "agree_shared_dat": 0.5},
           {"ce_shared": 0.5, "kd_shared": 0.0, "ce_dat": 0.25, "kd_dat": 0.0, "agree_shared_dat": 1.0}]
    kd1 = [{**k, "kd_shared": k["kd_shared"] + 0.25, "agree_shared_dat": 0.0} for k in kd0]
    run("a", "feddat", 0, [0.70, 0.80], extra={"acc_local": 0.5, "acc_shared": 0.25}, kd=kd0)
    run("a", "feddat", 1, [0.60, 0.80], extra={"acc_local": 0.5, "acc_shared": 0.25}, kd=kd1)
    run("a", "fedavg-adapter", 0, [0.70, 0.70])
    run("a", "fedavg-adapter", 2, [0.10, 0.10])  # no FedDAT seed 2: not paired
    run("a", "fedavg-adapter", 3, [0.0, 0.0], state="running")  # unfinished: left out
    run("b", "fedavg-adapter", 0, [0.75, 0.75])
    runs = feddat_report.load(str(tmp_path / "a"))
    runs.update(feddat_report.load(f"{tmp_path / 'b'}:2x epochs"))
    out = feddat_report.report(runs)
    assert "| feddat | 0,1 | 72.5 ± 3.5 | 36.2 ± 1.8 | 54 |" in out
    assert "| fedavg-adapter | 0,2 | 40.0 ± 42.4 |" in out and "| 27 |" in out
    assert "| fedavg-adapter | 0 | +5.0 | +5.0 |" in out  # seed 0 only: 75 - 70
    assert "| fedavg-adapter (2x epochs) | 0 | +0.0 | +0.0 |" in out
    assert "| 2 | 72.5 | 50.0 | 25.0 |" in out
    # distillation: mean over both clients and both seeds; agreement in %; no table for FedAvg
    assert "| 1 | 1.000 | 0.375 | 0.500 | 0.125 | 25.0 |" in out
    assert "| 2 | 0.500 | 0.125 | 0.250 | 0.000 | 50.0 |" in out
    assert "## feddat: distillation per round" in out and "fedavg-adapter: distillation" not in out
    assert feddat_report.plot_distillation(runs, tmp_path / "kd.png") and (tmp_path / "kd.png").stat().st_size > 0
    assert not feddat_report.plot_distillation({"fedavg-adapter": runs["fedavg-adapter"]}, tmp_path / "no.png")
    assert not (tmp_path / "no.png").exists()
