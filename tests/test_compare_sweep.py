"""`fedvl compare --sweep`: the grid, its folders, its records and the frontier, end to end on the tiny model."""

import json
import os
import subprocess
import sys

import pytest
from conftest import TINY

from fedvl.experiment import _check_settings
from fedvl.schema import ConfigError
from fedvl.sweep import grid, parse_sweep, point_names


def test_sweep_parses_to_a_grid_with_readable_folder_names():
    sweep = parse_sweep(["algorithm.rounds=2,4", "algorithm.local_steps=5,10"])
    assert sweep == [("algorithm.rounds", ["2", "4"]), ("algorithm.local_steps", ["5", "10"])]
    assert grid(sweep) == [["algorithm.rounds=2", "algorithm.local_steps=5"],
                           ["algorithm.rounds=2", "algorithm.local_steps=10"],
                           ["algorithm.rounds=4", "algorithm.local_steps=5"],
                           ["algorithm.rounds=4", "algorithm.local_steps=10"]]
    assert point_names(sweep) == ["rounds-2+local_steps-5", "rounds-2+local_steps-10",
                                  "rounds-4+local_steps-5", "rounds-4+local_steps-10"]
    # two keys ending alike keep their whole names; a character a folder should not hold becomes "_"
    assert point_names(parse_sweep(["model.lora_targets=query,value", "t2i.lora_targets=to_q"])) == \
        ["model.lora_targets-query+t2i.lora_targets-to_q", "model.lora_targets-value+t2i.lora_targets-to_q"]
    assert point_names(parse_sweep(["run.mlflow_uri=http://x"])) == ["mlflow_uri-http___x"]
    assert grid([]) == [[]] and point_names([]) == [""]


@pytest.mark.parametrize("specs, message", [
    (["algorithm.nope=1,2"], "--sweep: unknown config key 'algorithm.nope'"),
    (["algorithm.rounds=2,x"], "--sweep: algorithm.rounds: expected an integer, got 'x'"),
    (["algorithm.rounds"], "--sweep 'algorithm.rounds' is not KEY=V1,V2,..."),
    (["algorithm.rounds=2,,4"], "--sweep algorithm.rounds: value 2 is empty"),
    (["algorithm.rounds=2,2"], "--sweep algorithm.rounds lists '2' twice"),
    (["algorithm.rounds=2", "algorithm.rounds=4"], "--sweep names algorithm.rounds twice"),
    (["run.seed=0,1"], "--sweep cannot vary run.seed: give the seeds with --seeds"),
    (["model.peft=lora,adapter"], "--sweep cannot vary model.peft"),
    (["run.mlflow_uri=a/b,a_b"], "two grid points would share the folder name 'mlflow_uri-a_b'"),
])
def test_bad_sweeps_are_refused_in_one_line(specs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as e:
        point_names(parse_sweep(specs))
    assert "\n" not in str(e.value)


def test_a_setting_added_since_a_method_ran_counts_with_its_default(tmp_path):
    """A comparison recorded before algorithm.server_opt existed is reused while the new option keeps
    its default, and refused when it changes."""
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "compare-settings.json").write_text(json.dumps({"methods": {"fedavg": {"algorithm.rounds": 2}}}))
    now = {"algorithm.rounds": 2, "algorithm.server_opt": "none", "algorithm.server_lr": 1.0}
    _check_settings(folder, {"fedavg": now}, overwrite=False)
    assert json.loads((folder / "compare-settings.json").read_text()) == {"methods": {"fedavg": now}}
    with pytest.raises(ConfigError, match='ran fedavg with algorithm.server_opt="none", not "fedavgm"'):
        _check_settings(folder, {"fedavg": {**now, "algorithm.server_opt": "fedavgm"}}, overwrite=False)
    with pytest.raises(ConfigError, match="ran without --sweep, not with --sweep algorithm.rounds=2,4"):
        _check_settings(folder, {"rounds-2/fedavg": now}, overwrite=False, sweep=[("algorithm.rounds", ["2", "4"])])


def fedvl(*args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "fedvl", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_compare_sweep_end_to_end(tmp_path):
    """2 methods x 1 seed x a 2-point sweep through the CLI: one folder per run, frontier numbers
    that are each run's own, a rerun that reuses everything, a bad --sweep refused before any run."""
    args = ["compare", *TINY, "algorithm.local_steps=2", f"run.cache_dir={tmp_path / 'cache'}", "--quiet",
            "--name", "c", "--algorithms", "fedavg,local", "--seeds", "0", "--sweep", "algorithm.rounds=1,2"]
    r = fedvl(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "results" / "c"
    runs = {f"rounds-{n}/{m}/seed0" for n in (1, 2) for m in ("fedavg", "local")}
    assert {p.parent.relative_to(out).as_posix() for p in out.rglob("summary.json")} == runs
    for name in ("compare.md", "compare.json", "compare.png", "frontier.md", "frontier.json", "frontier.png"):
        assert (out / name).is_file(), name
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    settings = json.loads((out / "compare-settings.json").read_text())
    assert settings["sweep"] == [["algorithm.rounds", ["1", "2"]]]
    assert set(settings["methods"]) == {r.removesuffix("/seed0") for r in runs}
    assert settings["methods"]["rounds-2/fedavg"]["algorithm.rounds"] == 2
    frontier = json.loads((out / "frontier.json").read_text())
    assert [(p["method"], p["point"]) for p in frontier["points"]] == \
        [("fedavg", "rounds-1"), ("local", "rounds-1"), ("fedavg", "rounds-2"), ("local", "rounds-2")]
    for p in frontier["points"]:
        (run,) = p["runs"]
        summary = json.loads((out / run / "summary.json").read_text())
        rounds = int(p["point"].removeprefix("rounds-"))
        assert p["settings"] == {"algorithm.rounds": rounds} and p["rounds"] == rounds
        assert p["acc"] == summary["final"]["avg"]["acc"] and p["acc_std"] == 0.0 and p["seeds"] == 1
        # 4 clients, every one in every round: the bytes one update takes, once a round
        assert p["mb"] == pytest.approx(summary["params"]["bytes_up_per_client_round"] * rounds / 1e6)
        assert (p["mb"] > 0) == (p["method"] == "fedavg")
    assert "| fedavg | algorithm.rounds=2 | 2 |" in (out / "frontier.md").read_text()
    table = (out / "compare.md").read_text()
    assert "## algorithm.rounds=1" in table and "## algorithm.rounds=2" in table
    again = fedvl(*args, cwd=tmp_path)  # everything complete: reused, the same reports
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already complete, reused") == 4
    assert json.loads((out / "frontier.json").read_text()) == frontier
    # a bad key: one line, exit 2, nothing run or changed
    before = sorted(p.as_posix() for p in out.rglob("*"))
    bad = fedvl(*args[:-1], "algorithm.roundz=1,2", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "fedvl: error: --sweep: unknown config key 'algorithm.roundz'" in bad.stderr
    assert sorted(p.as_posix() for p in out.rglob("*")) == before


def test_jobs_run_side_by_side_and_give_the_same_numbers(tmp_path):
    args = ["compare", *TINY, "algorithm.local_steps=2", f"run.cache_dir={tmp_path / 'cache'}", "--quiet",
            "--algorithms", "fedavg,local", "--seeds", "0", "--sweep", "algorithm.rounds=1,2"]
    one = fedvl(*args, "--name", "one", cwd=tmp_path)
    two = fedvl(*args, "--name", "two", "--jobs", "2", cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert "4 run(s), 2 side by side" in two.stdout and two.stdout.count(": done, average accuracy") == 4
    a, b = (json.loads((tmp_path / "results" / n / "frontier.json").read_text()) for n in ("one", "two"))
    assert [(p["method"], p["point"], p["acc"], p["mb"]) for p in a["points"]] == \
        [(p["method"], p["point"], p["acc"], p["mb"]) for p in b["points"]]
    bad = fedvl(*args, "--name", "bad", "--jobs", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--jobs must be 1..64" in bad.stderr


def test_frontier_merge_draws_one_frontier_from_several_comparisons(tmp_path):
    from pathlib import Path

    base = ["compare", *TINY, "algorithm.rounds=1", "algorithm.local_steps=1", f"run.cache_dir={tmp_path / 'cache'}",
            "--quiet", "--seeds", "0"]
    assert fedvl(*base, "--algorithms", "fedavg", "--name", "a", cwd=tmp_path).returncode == 0
    assert fedvl(*base, "algorithm.keep_local=head", "--algorithms", "fedavg", "--name", "b", cwd=tmp_path).returncode == 0
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "frontier_merge.py"
    res = tmp_path / "results"
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "merged"), "T", f"{res / 'a'}:head travels",
                        f"{res / 'b'}:head local", "--ref", "local=40"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "merged.md").read_text()
    acc = {n: json.loads((res / n / "fedavg" / "seed0" / "summary.json").read_text())["final"]["avg"]["acc"]
           for n in ("a", "b")}
    assert f"| fedavg (head travels) | - | 1 |" in table and f"{100 * acc['a']:.1f} ± 0.0" in table
    assert f"| fedavg (head local) | - | 1 |" in table and f"{100 * acc['b']:.1f} ± 0.0" in table
    assert "| local | - | 0 | 0 | 40.0 ± 0.0 | n/a |" in table
    assert (tmp_path / "merged.png").read_bytes()[:4] == b"\x89PNG"
