"""Accuracy against communication: one point per method and sweep grid point of a comparison
(``frontier.json`` / ``frontier.md`` / ``frontier.png`` beside ``compare.md``).

Pure functions over finished runs' ``summary.json`` and ``metrics.jsonl`` (as
:func:`fedvl.report.compare.load_runs` reads them), so the frontier can be rebuilt without
re-running anything. Communication is what each client sends up: the run's bytes per
client per round (``summary.json`` ``params.bytes_up_per_client_round``, the travelling
parameters in the transport dtype) times the updates it sent (``metrics.jsonl``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedvl.report.compare import LOCAL_ONLY, POOLED


def mb_sent_per_client(bytes_per_round: float, history: list[dict[str, Any]]) -> float:
    """Mean over the run's clients of the MB (10^6 bytes) each sent up: ``bytes_per_round`` for every
    update sent (a client that trained in a round, its update accepted or rejected), summed over the
    rounds and divided by the clients the records name. With every client in every round it is
    rounds x bytes per round; with ``algorithm.fraction_fit`` < 1 it is that times the share sampled."""
    clients: set[str] = set()
    sent = 0
    for r in history:
        senders = set(r.get("train", {})) | set(r.get("rejected", {}))
        sent += len(senders)
        clients |= senders | set(r.get("sampled", [])) | set(r.get("dropped", {})) | set(r.get("eval", {}))
    return bytes_per_round * sent / len(clients) / 1e6 if clients else 0.0


def run_point(summary: dict[str, Any], metric: str = "acc") -> dict[str, float]:
    """One finished run's final average ``metric``, MB sent per client and rounds."""
    history = summary["history"]
    return {"acc": float(summary["final"]["avg"][metric]),
            "mb": mb_sent_per_client(summary["params"]["bytes_up_per_client_round"], history),
            "rounds": max((r["round"] for r in history), default=0)}


def aggregate_point(runs: list[dict[str, float]]) -> dict[str, float]:
    """Over the seeds of one method at one grid point: mean and sample std (0 for one seed) of the
    accuracy, mean MB sent per client and mean rounds."""
    acc = np.asarray([r["acc"] for r in runs], dtype=float)
    rounds = float(np.mean([r["rounds"] for r in runs]))
    return {"acc": float(acc.mean()), "acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "mb": float(np.mean([r["mb"] for r in runs])), "rounds": int(rounds) if rounds.is_integer() else rounds,
            "seeds": len(runs)}


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For (MB, accuracy) pairs: whether each is Pareto-optimal, i.e. no other point reaches at least
    its accuracy with no more MB while being strictly better in one of the two. Equal points are
    all optimal (none is strictly better)."""
    return [not any(m2 <= m and a2 >= a and (m2 < m or a2 > a) for m2, a2 in points) for m, a in points]


def frontier_points(groups: list[dict[str, Any]], metric: str = "acc") -> list[dict[str, Any]]:
    """``groups``: per method and grid point, ``{"method", "point" (its folder name, "" without a
    sweep), "settings" (swept key -> value), "runs" (its seeds' summaries with their history), and
    optionally "run_dirs" (the seeds' folders as the report should name them)}``.
    Returns one record per group with :func:`aggregate_point`'s numbers and ``pareto``: whether it
    is on the frontier among the federated and local-only points (a pooled-data reference,
    centralized, is not a contender: ``None``)."""
    out = []
    for g in groups:
        stats = aggregate_point([run_point(s, metric) for s in g["runs"]])
        out.append({"method": g["method"], "point": g["point"], "settings": g["settings"], **stats,
                    "runs": g.get("run_dirs") or [s.get("run_dir") for s in g["runs"]]})
    contenders = [p for p in out if p["method"] not in POOLED]
    for p, ok in zip(contenders, pareto([(p["mb"], p["acc"]) for p in contenders])):
        p["pareto"] = ok
    for p in out:
        p.setdefault("pareto", None)
    return out


def _mb(x: float) -> str:
    """Three significant digits at least: a knowledge-transfer run sends kB, a full model GB."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}" if x >= 1 else f"{x:.3g}"


def _label(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in p["settings"].items()) or "-"


def frontier_markdown(points: list[dict[str, Any]], title: str, metric: str = "acc") -> str:
    rows = sorted(points, key=lambda p: (p["method"], p["mb"], p["rounds"]))
    lines = [f"# Accuracy vs communication: {title}", "",
             f"| method | point | rounds | MB sent per client | {metric} (%) | Pareto |", "|---|---|---|---|---|---|"]
    for p in rows:
        mark = "n/a" if p["pareto"] is None else ("**yes**" if p["pareto"] else "")
        rounds = f"{p['rounds']:g}"
        lines.append(f"| {p['method']} | {_label(p)} | {rounds} | {_mb(p['mb'])} | "
                     f"{100 * p['acc']:.1f} ± {100 * p['acc_std']:.1f} | {mark} |")
    seeds = sorted({p["seeds"] for p in points})
    return "\n".join(lines) + (
        f"\n\nFinal-round average {metric} over clients, mean ± std over {'/'.join(map(str, seeds))} seed(s). "
        "MB sent per client: the MB (10^6 bytes) each client sent up over the whole run, averaged over the "
        "clients. Pareto: no other point reaches at least this accuracy with no more MB (pooled-data "
        "references such as centralized are not contenders: n/a).\n")


def plot_frontier(points: list[dict[str, Any]], path: Path, title: str, metric: str = "acc") -> None:
    """Two panels, accuracy vs MB sent per client and accuracy vs rounds: one curve per method (its
    grid points in order of the panel's axis), the local-only and pooled references as horizontal
    lines at their best accuracy over the grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    colors = plt.get_cmap("tab20").colors
    methods = list(dict.fromkeys(p["method"] for p in points))
    curves = [m for m in methods if m not in POOLED | LOCAL_ONLY]
    refs = [m for m in methods if m in POOLED | LOCAL_ONLY]
    for ax, x, xlabel in ((axes[0], "mb", "MB sent per client (cumulative)"), (axes[1], "rounds", "rounds")):
        for i, m in enumerate(curves):
            pts = sorted((p for p in points if p["method"] == m), key=lambda p: (p[x], p["mb"]))
            xs, ys = [p[x] for p in pts], np.array([100 * p["acc"] for p in pts])
            err = np.array([100 * p["acc_std"] for p in pts])
            color = colors[(2 * i) % 20 + (i // 10) % 2]
            ax.errorbar(xs, ys, yerr=err if err.any() else None, marker="o", ms=4, capsize=2, label=m, color=color)
            for p, y in zip(pts, ys):
                if p["pareto"] and x == "mb":  # the frontier's points ringed
                    ax.plot(p[x], y, marker="o", ms=10, mfc="none", color="black", lw=0)
        for j, m in enumerate(refs):
            best = max(100 * p["acc"] for p in points if p["method"] == m)
            ax.axhline(best, color="grey" if m in LOCAL_ONLY else "black", linestyle="--" if m in LOCAL_ONLY else ":",
                       lw=1.2, label=m)
        ax.set_xlabel(xlabel)
        ax.set_xlim(left=0)  # zero MB (no communication) and round 0 are where the references sit
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"final average test {metric} (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title + " (ringed: Pareto-optimal)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def frontier_json(points: list[dict[str, Any]], sweep: list[tuple[str, list[str]]], metric: str = "acc") -> dict:
    """What ``frontier.json`` holds: the sweep as given and every point (NaN-free numbers)."""
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in p.items()}
             for p in points]
    return {"metric": metric, "sweep": [[k, v] for k, v in sweep], "points": clean}


def write_frontier(out_dir: Path, groups: list[dict[str, Any]], sweep: list[tuple[str, list[str]]], title: str,
                   metric: str = "acc") -> list[dict[str, Any]]:
    """``frontier.json`` / ``frontier.md`` / ``frontier.png`` in ``out_dir`` from :func:`frontier_points`'
    ``groups``; returns the points."""
    points = frontier_points(groups, metric)
    (out_dir / "frontier.json").write_text(json.dumps(frontier_json(points, sweep, metric), indent=2))
    (out_dir / "frontier.md").write_text(frontier_markdown(points, title, metric))
    plot_frontier(points, out_dir / "frontier.png", title, metric)
    return points
