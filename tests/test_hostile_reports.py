"""Reports and `fedvl compare` under hostile conditions: clients that leave and come back (or never
come back), runs a user damaged, comparisons rerun with other settings, duplicate or mixed methods.
Every report states who is missing and over whom an average is taken; every refusal is one line,
exit 2, before anything is written."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY
from test_hostile import fedvl, one_line, snapshot

from fedvl.report.history import History

# five evaluated rounds of three clients: b is absent from rounds 2-3 (its node froze, then came
# back), c is absent from the final round (its node was killed)
_SCORES = {"a": 0.5, "b": 0.6, "c": 0.7}


def _round(rnd: int, absent: tuple[str, ...] = ()) -> dict:
    ev = {cid: {"acc": acc + rnd / 100, "bal_acc": acc, "n": 8} for cid, acc in _SCORES.items() if cid not in absent}
    avg = {k: sum(m[k] for m in ev.values()) / len(ev) for k in ("acc", "bal_acc")}
    rec = {"round": rnd, "train_loss": 1.0, "time_s": 1.0, "eval": ev, "avg": avg}
    if absent:
        rec["dropped"] = rec["eval_dropped"] = {cid: "no reply within 15.0s (disconnected?)" for cid in absent}
    return rec


ROUNDS = [_round(1), _round(2, ("b",)), _round(3, ("b",)), _round(4), _round(5, ("c",))]


def _write_metrics(run_dir: Path, rounds: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))


def _console():
    from rich.console import Console

    return Console(file=io.StringIO(), width=200)


# -- 1/2. a client that leaves and rejoins, or leaves for good, in every report ----------------------

def test_history_says_which_rounds_each_client_reported():
    from fedvl.report.history import client_rounds, missed_rounds

    assert client_rounds(ROUNDS) == {"a": [1, 2, 3, 4, 5], "b": [1, 4, 5], "c": [1, 2, 3, 4]}
    assert missed_rounds(ROUNDS) == {"b": [2, 3], "c": [5]}
    # rounds that evaluate nobody by design (run.eval_every) are nobody's absence
    assert missed_rounds([_round(1), {"round": 2, "train_loss": 1.0}, _round(3)]) == {}


def test_plot_draws_every_client_with_gaps_where_absent(tmp_path):
    from fedvl.report.plots import plot_accuracy

    # the client list of the last round (a, b) is not the run's: c must still be drawn, b with a gap
    plot_accuracy(ROUNDS, tmp_path / "accuracy.png", "t")
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    # a round without scores (run.eval_every) is skipped, not a KeyError
    plot_accuracy([*ROUNDS[:2], {"round": 6, "train_loss": 1.0}], tmp_path / "b.png", "t")
    assert (tmp_path / "b.png").is_file()


def test_summary_names_the_missing_clients_and_labels_the_average(tmp_path):
    """summary.md / summary.json of a run whose client b missed rounds 2-3 and c the final round,
    written by the code every run ends with (the deployed server failed here with a KeyError)."""
    from fedvl.experiment import _write_results

    run = tmp_path / "run"
    _write_metrics(run, ROUNDS)
    summary = {"final": ROUNDS[-1], "params": {}, "wall_s": 1.0, "setup_s": 0.0}
    _write_results(run, _console(), "fedavg · test", ["a note"], summary)
    md = (run / "summary.md").read_text()
    assert "Round 5 (final): 2 of 3 clients reported; missing: c." in md
    assert "| c | - | - | missing |" in md
    assert "| average of the 2 of 3 clients present | 60.0 | 55.0 |" in md
    assert "- b missed rounds 2-3\n" in md
    assert "- c missed round 5, the final round included (its last scores: round 4)\n" in md
    assert "averages are unweighted means over the clients present in each round" in md
    saved = json.loads((run / "summary.json").read_text())
    assert saved["clients"] == {"a": {"reported_rounds": [1, 2, 3, 4, 5], "missed_rounds": []},
                                "b": {"reported_rounds": [1, 4, 5], "missed_rounds": [2, 3]},
                                "c": {"reported_rounds": [1, 2, 3, 4], "missed_rounds": [5]}}
    assert json.loads((run / "status.json").read_text())["state"] == "complete"


def test_summary_when_every_client_missed_the_final_evaluation(tmp_path):
    """No scores in the final round at all: the table is of the last round with scores, said so."""
    from fedvl.experiment import _write_results

    run = tmp_path / "run"
    last = {"round": 6, "train_loss": 1.0, "time_s": 1.0, "eval_dropped": {c: "no reply" for c in _SCORES}}
    _write_metrics(run, [*ROUNDS, last])
    summary = {"final": last, "params": {}, "wall_s": 1.0, "setup_s": 0.0}
    _write_results(run, _console(), "t", [], summary)
    md = (run / "summary.md").read_text()
    assert "Round 5 (the last with scores: no client reported any in the final round, 6): 2 of 3 clients " \
           "reported; missing: c." in md
    saved = json.loads((run / "summary.json").read_text())
    assert saved["final"]["round"] == 5 and saved["clients"]["a"]["missed_rounds"] == [6]


def test_summary_of_a_run_where_nobody_was_missing_is_unchanged(tmp_path):
    from fedvl.report.tables import markdown_summary

    md = markdown_summary(ROUNDS[0], "t", ["n"], [ROUNDS[0]])
    assert "Round 1 (final).\n" in md and "| average | 61.0 | 60.0 |" in md and "missed" not in md


def _run_summary(rounds: list[dict], run_dir: str) -> dict:
    return {"final": rounds[-1], "history": rounds, "run_dir": run_dir,
            "params": {"trainable_params": 10, "travel_params": 4, "bytes_up_per_client_round": 16}}


def test_compare_table_keeps_a_client_missing_from_one_seeds_final_round():
    from fedvl.report.compare import absence_notes, comparison_rows, markdown_table, plot_average

    full = [_round(r) for r in range(1, 6)]
    runs = {"fedavg": [_run_summary(ROUNDS, "cmp/fedavg/seed0"), _run_summary(full, "cmp/fedavg/seed1")],
            "local": [_run_summary(full[:4] + [_round(5, ("a",))], "cmp/local/seed0"),
                      _run_summary(full, "cmp/local/seed1")]}
    rows = {r["method"]: r for r in comparison_rows(runs, "acc")}
    assert rows["fedavg"]["client_seeds"] == {"a": 2, "b": 2, "c": 1}
    assert rows["fedavg"]["clients"]["c"] == pytest.approx((0.75, 0.0))
    table = markdown_table(list(rows.values()), "acc")
    line = {ln.split(" | ")[0][2:]: ln for ln in table.splitlines() if ln.startswith("| ")}
    assert "| 75.0 ± 0.0 (1/2) |" in line["fedavg"] and "‡" in line["fedavg"] and "‡" in line["local"]
    assert "‡ = a client was missing from a seed's final round" in table
    assert absence_notes(runs) == ["cmp/fedavg/seed0: b missed rounds 2-3; c missed round 5",
                                   "cmp/local/seed0: a missed round 5"]


def test_compare_plot_tolerates_seeds_with_different_evaluated_rounds(tmp_path):
    from fedvl.report.compare import plot_average

    runs = {"fedavg": [_run_summary(ROUNDS, "s0"), _run_summary(ROUNDS[:3] + ROUNDS[4:], "s1")]}
    plot_average(runs, tmp_path / "compare.png", "t")
    assert (tmp_path / "compare.png").is_file()


@pytest.mark.slow
def test_a_client_that_leaves_and_rejoins_finishes_the_run(tiny_cfg, tmp_path, monkeypatch):
    """End to end through Flower's simulation (the deployed server's code path): c1 answers nothing
    in rounds 2-3 and comes back, c2 is gone in the final round. The run completes and says so."""
    from fedvl.experiment import run_experiment
    from fedvl.finetune import exchange as parameters

    real_fit, real_eval = parameters.client_fit, parameters.client_evaluate
    now = {"round": 0}
    away = {2: "c1-sketch", 3: "c1-sketch", 4: "c2-night"}

    def fit(fed, store, cid, rnd, params, on_step=None):
        now["round"] = rnd
        if away.get(rnd) == cid:
            raise ConnectionError("node froze")
        return real_fit(fed, store, cid, rnd, params, on_step)

    def evaluate(fed, store, cid, params):
        if away.get(now["round"]) == cid:
            raise ConnectionError("node froze")
        return real_eval(fed, store, cid, params)

    monkeypatch.setattr(parameters, "client_fit", fit)
    monkeypatch.setattr(parameters, "client_evaluate", evaluate)
    run = tmp_path / "run"
    run_experiment(tiny_cfg("run.runtime=flower-sim", "algorithm.rounds=4"), run, progress_enabled=False)
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    saved = json.loads((run / "summary.json").read_text())
    assert saved["clients"]["c1-sketch"] == {"reported_rounds": [1, 4], "missed_rounds": [2, 3]}
    assert saved["clients"]["c2-night"] == {"reported_rounds": [1, 2, 3], "missed_rounds": [4]}
    md = (run / "summary.md").read_text()
    assert "Round 4 (final): 3 of 4 clients reported; missing: c2-night." in md
    assert "average of the 3 of 4 clients present" in md and "c1-sketch missed rounds 2-3" in md
    assert (run / "accuracy.png").is_file()


# -- 3/6. one comparison: no seed or method twice, one family -----------------------------------------

@pytest.fixture
def work(tmp_path):
    w = tmp_path / "work"
    (w / "results" / "keep").mkdir(parents=True)
    (w / "results" / "keep" / "status.json").write_text('{"state": "complete"}')
    return w


def _cmp(work: Path, *extra: str, cache: Path | None = None):
    return fedvl("compare", *TINY, f"run.cache_dir={cache or work.parent / 'cache'}", "--quiet", "--name", "c",
                 *extra, cwd=work)


@pytest.mark.parametrize("extra, text", [
    (("--algorithms", "fedavg", "--seeds", "0,0"), "--seeds names 0 twice: a comparison runs each once"),
    (("--algorithms", "fedavg,local,fedavg", "--seeds", "0"), "--algorithms names fedavg twice"),
    # model.peft is adapter by default: both name one run
    (("--algorithms", "fedavg,fedavg-adapter", "--seeds", "0"),
     "--algorithms: fedavg and fedavg-adapter are the same run with this config"),
    (("--algorithms", "fedavg,fedmmkt", "--seeds", "0"),
     "--algorithms mixes the parameter family (fedavg) with the knowledge family (fedmmkt)"),
])
def test_compare_refuses_duplicates_and_mixed_families_before_any_run(work, extra, text):
    before = snapshot(work)
    r = _cmp(work, *extra)
    one_line(r, 2, text)
    assert snapshot(work) == before and not (work / "results" / "c").exists()


# -- 4/5. a comparison folder remembers its settings; damaged runs are finished again ----------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-method comparison (results/c), made once; tests work on copies of it."""
    base = tmp_path_factory.mktemp("cmp")
    work, cache = base / "work", base / "cache"
    work.mkdir()
    r = _cmp(work, "--algorithms", "fedavg", "--seeds", "0", cache=cache)
    assert r.returncode == 0, r.stderr
    return work, cache


@pytest.fixture
def cmp_copy(finished, tmp_path):
    work, cache = finished
    shutil.copytree(work, tmp_path / "work")
    return tmp_path / "work", cache


def test_compare_records_its_settings_and_refuses_other_ones(cmp_copy):
    work, cache = cmp_copy
    folder = work / "results" / "c"
    recorded = json.loads((folder / "compare-settings.json").read_text())["methods"]["fedavg"]
    assert recorded["algorithm.rounds"] == 2 and "run.seed" not in recorded
    before = snapshot(work)
    r = _cmp(work, "--algorithms", "fedavg", "--seeds", "0", "algorithm.rounds=3", cache=cache)
    one_line(r, 2, f"comparison {Path('results') / 'c'} ran fedavg with algorithm.rounds=2, not 3: pass "
                   "--overwrite to start it afresh, or choose another --name")
    assert snapshot(work) == before


def test_compare_with_the_same_settings_reuses_its_runs(cmp_copy):
    work, cache = cmp_copy
    run = work / "results" / "c" / "fedavg" / "seed0"
    metrics = (run / "metrics.jsonl").read_bytes()
    r = _cmp(work, "--algorithms", "fedavg", "--seeds", "0", cache=cache)
    assert r.returncode == 0, r.stderr
    assert "fedavg seed 0: already complete, reused" in r.stdout
    assert (run / "metrics.jsonl").read_bytes() == metrics


@pytest.mark.slow
def test_compare_overwrite_starts_afresh_with_the_new_settings(cmp_copy):
    work, cache = cmp_copy
    folder = work / "results" / "c"
    r = _cmp(work, "--algorithms", "fedavg", "--seeds", "0", "algorithm.rounds=3", "--overwrite", cache=cache)
    assert r.returncode == 0, r.stderr
    assert [x["round"] for x in History.read(folder / "fedavg" / "seed0")] == [1, 2, 3]
    assert json.loads((folder / "compare-settings.json").read_text())["methods"]["fedavg"]["algorithm.rounds"] == 3
    assert "Rounds: 3." in (folder / "compare.md").read_text()


def test_damaged_settings_record_is_one_line(cmp_copy):
    work, cache = cmp_copy
    (work / "results" / "c" / "compare-settings.json").write_text("{not json")
    r = _cmp(work, "--algorithms", "fedavg", "--seeds", "0", cache=cache)
    one_line(r, 2, "compare-settings.json is damaged: pass --overwrite to start the comparison afresh")


@pytest.mark.parametrize("damage, said", [
    (lambda run: (run / "status.json").write_text('{"state": "comp'), "its status.json is damaged"),
    (lambda run: (run / "summary.json").unlink(), "its summary.json is missing"),
    (lambda run: (run / "summary.json").write_text("[]"), "its summary.json or metrics.jsonl is damaged"),
])
def test_a_damaged_run_in_a_comparison_is_finished_again(cmp_copy, damage, said):
    """Its last round is checkpointed: the run is resumed, which writes its results again without
    training a round more, and the comparison's table is made."""
    work, cache = cmp_copy
    folder = work / "results" / "c"
    run = folder / "fedavg" / "seed0"
    damage(run)
    (folder / "compare.md").unlink()
    r = _cmp(work, "--algorithms", "fedavg", "--seeds", "0", cache=cache)
    assert r.returncode == 0, r.stderr
    assert f"fedavg seed 0: {said}; running it again" in " ".join(r.stdout.split())
    assert "resuming from round 2 of 2" in r.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    assert json.loads((run / "summary.json").read_text())["final"]["round"] == 2
    assert [x["round"] for x in History.read(run)] == [1, 2]
    assert (folder / "compare.md").is_file()
