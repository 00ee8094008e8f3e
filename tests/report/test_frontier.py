"""The accuracy vs communication frontier from hand-made run summaries (pure functions, no training)."""

import pytest

from fedvl.report.frontier import (aggregate_point, frontier_json, frontier_markdown, frontier_points,
                                   mb_sent_per_client, pareto, run_point)


def test_pareto_keeps_the_best_accuracy_for_no_more_mb():
    pts = [(0.0, 0.50), (1.0, 0.60), (2.0, 0.55), (2.0, 0.70), (3.0, 0.70), (1.0, 0.60)]
    # (2, .55) is beaten by (1, .60); (3, .70) by (2, .70) with less MB; the two equal (1, .60) both stay
    assert pareto(pts) == [True, True, False, True, False, True]
    assert pareto([]) == []


def test_mb_per_client_counts_the_updates_each_client_sent():
    history = [
        {"round": 1, "sampled": ["a", "b"], "train": {"a": {}, "b": {}}, "eval": {"a": {}, "b": {}, "c": {}}},
        # b's update was sent and rejected; c was sampled but dropped (sent nothing)
        {"round": 2, "sampled": ["b", "c"], "train": {}, "rejected": {"b": "bad"}, "dropped": {"c": "timeout"}},
    ]
    # 3 updates x 2 MB over 3 clients
    assert mb_sent_per_client(2e6, history) == pytest.approx(2.0)
    assert mb_sent_per_client(2e6, []) == 0.0
    full = [{"round": r, "sampled": ["a", "b"], "train": {"a": {}, "b": {}}} for r in (1, 2, 3)]
    assert mb_sent_per_client(5e5, full) == pytest.approx(1.5)  # every client every round: rounds x bytes


def _summary(acc, bytes_per_round=1e6, rounds=2, run_dir=None):
    return {"final": {"avg": {"acc": acc}}, "params": {"bytes_up_per_client_round": bytes_per_round},
            "history": [{"round": r, "sampled": ["a", "b"], "train": {"a": {}, "b": {}}} for r in range(1, rounds + 1)],
            "run_dir": run_dir}


def test_one_point_is_the_mean_and_sample_std_over_seeds():
    runs = [run_point(_summary(0.5)), run_point(_summary(0.7))]
    assert runs[0] == {"acc": 0.5, "mb": 2.0, "rounds": 2}
    p = aggregate_point(runs)
    assert p["acc"] == pytest.approx(0.6) and p["acc_std"] == pytest.approx(0.1414213562373095)
    assert (p["mb"], p["rounds"], p["seeds"]) == (2.0, 2, 2)
    assert aggregate_point(runs[:1])["acc_std"] == 0.0


def test_frontier_points_leave_the_pooled_reference_out_of_the_pareto_set():
    groups = [
        {"method": "fedavg", "point": "rounds-2", "settings": {"algorithm.rounds": 2}, "runs": [_summary(0.6)]},
        {"method": "fedavg", "point": "rounds-4", "settings": {"algorithm.rounds": 4},
         "runs": [_summary(0.55, rounds=4)]},
        {"method": "local", "point": "rounds-2", "settings": {"algorithm.rounds": 2},
         "runs": [_summary(0.4, bytes_per_round=0)]},
        # centralized sends nothing and beats everyone: a reference, not a contender
        {"method": "centralized", "point": "rounds-2", "settings": {"algorithm.rounds": 2},
         "runs": [_summary(0.9, bytes_per_round=0)], "run_dirs": ["rounds-2/centralized/seed0"]},
    ]
    pts = {(p["method"], p["point"]): p for p in frontier_points(groups)}
    assert pts[("fedavg", "rounds-2")]["pareto"] is True and pts[("fedavg", "rounds-2")]["mb"] == 2.0
    assert pts[("fedavg", "rounds-4")]["pareto"] is False and pts[("fedavg", "rounds-4")]["mb"] == 4.0
    assert pts[("local", "rounds-2")]["pareto"] is True
    assert pts[("centralized", "rounds-2")]["pareto"] is None
    assert pts[("centralized", "rounds-2")]["runs"] == ["rounds-2/centralized/seed0"]
    md = frontier_markdown(list(pts.values()), "t")
    line = {tuple(c.strip() for c in ln.split("|")[1:3]): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert line[("fedavg", "algorithm.rounds=2")].endswith("| 2 | 2.00 | 60.0 ± 0.0 | **yes** |")
    assert line[("fedavg", "algorithm.rounds=4")].endswith("| 4 | 4.00 | 55.0 ± 0.0 |  |")
    assert line[("centralized", "algorithm.rounds=2")].endswith("| n/a |")
    out = frontier_json(list(pts.values()), [("algorithm.rounds", ["2", "4"])])
    assert out["sweep"] == [["algorithm.rounds", ["2", "4"]]] and len(out["points"]) == 4
