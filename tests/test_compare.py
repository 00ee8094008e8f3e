"""The paper-style table from hand-made run summaries (pure functions, no training)."""

import pytest

from fedvl.report.compare import comparison_rows, markdown_table


def _summary(accs, extra=None):
    ev = {c: {"acc": a, **({k: v[i] for k, v in extra.items()} if extra else {})} for i, (c, a) in enumerate(accs.items())}
    avg = {"acc": sum(accs.values()) / len(accs)}
    for k in extra or {}:
        avg[k] = sum(extra[k]) / len(extra[k])
    return {"final": {"eval": ev, "avg": avg},
            "params": {"trainable_params": 10, "travel_params": 4, "bytes_up_per_client_round": 16},
            "history": [{"round": 1, "time_s": 2.0}, {"round": 2, "time_s": 4.0}]}


def test_rows_mean_std_and_feddat_sub_rows_and_local_marker():
    runs = {
        "local": [_summary({"a": 0.5, "b": 0.7}), _summary({"a": 0.7, "b": 0.7})],
        "fedavg-adapter": [_summary({"a": 0.4, "b": 0.6}), _summary({"a": 0.6, "b": 0.6})],
        "feddat": [_summary({"a": 0.8, "b": 0.6}, {"acc_local": [0.5, 0.5], "acc_shared": [0.9, 0.9]})] * 2,
    }
    rows = {r["method"]: r for r in comparison_rows(runs, "acc")}
    # local: client a 0.5 / 0.7 -> mean 0.6, sample std sqrt(0.02) = 0.1414
    assert rows["local"]["clients"]["a"] == pytest.approx((0.6, 0.14142135623730953))
    assert rows["local"]["average"] == pytest.approx((0.65, 0.07071067811865477))
    assert rows["feddat (A_C alone)"]["average"] == pytest.approx((0.5, 0.0))
    assert rows["feddat (A_S alone)"]["clients"]["b"] == pytest.approx((0.9, 0.0))
    assert rows["feddat"]["round_s"] == 3.0  # median over rounds, then over seeds
    table = markdown_table(list(rows.values()), "acc")
    line = {ln.split(" | ")[0][2:]: ln for ln in table.splitlines() if ln.startswith("| ")}
    assert "55.0 ± 7.1 †" in line["fedavg-adapter"]  # below local-only's 65.0: marked
    assert "†" not in line["feddat"] and "**70.0 ± 0.0**" in line["feddat"]
    assert "**" not in line["feddat (A_S alone)"]  # a sub-score is never the bold headline
    assert "| 10 | 4 (0.00 MB) | 3.0 |" in line["local"]


def test_kt_family_references_are_never_bold_and_kt_local_is_the_marker():
    """kt-centralized is a pooled-data reference like centralized; kt-local is the FedMMKT family's
    no-communication baseline, so † compares against it."""
    runs = {
        "kt-local": [_summary({"a": 0.6, "b": 0.6})],
        "kt-distill": [_summary({"a": 0.5, "b": 0.5})],
        "fedmmkt": [_summary({"a": 0.7, "b": 0.7})],
        "kt-centralized": [_summary({"a": 0.9, "b": 0.9})],
    }
    table = markdown_table(comparison_rows(runs, "acc"), "acc")
    line = {ln.split(" | ")[0][2:]: ln for ln in table.splitlines() if ln.startswith("| ")}
    assert "**70.0 ± 0.0**" in line["fedmmkt"] and "**" not in line["kt-centralized"]
    assert "50.0 ± 0.0 †" in line["kt-distill"] and "†" not in line["kt-centralized"]
