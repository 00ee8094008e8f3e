"""Paper-style comparison: one row per method, one column per client plus the
average, mean ± std over seeds, with parameter and communication costs.

Pure functions over finished run folders (their ``summary.json`` and
``metrics.jsonl``), so a table can be rebuilt without re-running anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedvl.report.history import History


def load_runs(method_dirs: dict[str, list[Path]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for method, dirs in method_dirs.items():
        out[method] = []
        for d in dirs:
            summary = json.loads((d / "summary.json").read_text())
            summary["history"] = History.read(d)
            summary["run_dir"] = str(d)
            out[method].append(summary)
    return out


def _clients(seeds: list[dict[str, Any]]) -> list[str]:
    """Every client any seed's final round reported, in the order first seen: a client absent
    from one run's final round is still a column."""
    return list(dict.fromkeys(cid for s in seeds for cid in s["final"].get("eval", {})))


def _over_seeds(seeds: list[dict[str, Any]], cid: str, key: str) -> tuple[float, float, int]:
    """Mean, std and count over the seeds whose final round has ``cid``'s ``key``."""
    values = [s["final"]["eval"][cid][key] for s in seeds if key in s["final"].get("eval", {}).get(cid, {})]
    return (*_mean_std(values), len(values)) if values else (float("nan"), 0.0, 0)


def absence_notes(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per run in which a client missed an evaluated round (final or earlier)."""
    from fedvl.report.history import missed_rounds, spans

    lines = []
    for method, seeds in runs.items():
        for s in seeds:
            missed = missed_rounds(s["history"])
            if missed:
                where = s.get("run_dir", method)
                lines.append(f"{where}: " + "; ".join(f"{cid} missed {spans(m)}" for cid, m in missed.items()))
    return lines


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def comparison_rows(runs: dict[str, list[dict[str, Any]]], metric: str = "acc") -> list[dict[str, Any]]:
    """Per method: mean and std over seeds of each client's final score and of the average."""
    rows = []
    for method, seeds in runs.items():
        clients = _clients(seeds)
        row: dict[str, Any] = {"method": method, "seeds": len(seeds), "clients": {}, "client_seeds": {}}
        for cid in clients:
            mean, std, n = _over_seeds(seeds, cid, metric)
            row["clients"][cid], row["client_seeds"][cid] = (mean, std), n
        row["average"] = _mean_std([s["final"]["avg"][metric] for s in seeds])
        # a seed whose final round missed a client averages over the clients present
        row["partial"] = any(len(s["final"].get("eval", {})) < len(clients) for s in seeds)
        p = seeds[0]["params"]
        row.update(trainable=p["trainable_params"], travel=p["travel_params"],
                   bytes_up=p["bytes_up_per_client_round"],
                   round_s=float(np.median([np.median([r["time_s"] for r in s["history"]]) for s in seeds])))
        rows.append(row)
        # FedDAT also reports A_C alone and A_S alone (keys ``acc_local`` / ``acc_shared``)
        for suffix, label in (("_local", "A_C alone"), ("_shared", "A_S alone")):
            key = f"{metric}{suffix}"
            if key in seeds[0]["final"]["avg"]:
                stats = {cid: _over_seeds(seeds, cid, key) for cid in clients}
                sub = dict(row, method=f"{method} ({label})", sub=True,
                           clients={cid: st[:2] for cid, st in stats.items()},
                           client_seeds={cid: st[2] for cid, st in stats.items()})
                sub["average"] = _mean_std([s["final"]["avg"][key] for s in seeds])
                rows.append(sub)
    return rows


# references, not federated methods: trained on the pooled data / on each client's data alone
POOLED = {"centralized", "kt-centralized"}
LOCAL_ONLY = {"local", "kt-local"}


def _cell(ms: tuple[float, float], seeds: int | None = None, of: int | None = None) -> str:
    """mean ± std; over fewer seeds than the row's (a client absent from some final rounds): "(k/n)"."""
    if seeds == 0:
        return "-"
    return f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}" + (f" ({seeds}/{of})" if seeds is not None and seeds != of else "")


def markdown_table(rows: list[dict[str, Any]], metric: str) -> str:
    clients = list(dict.fromkeys(c for r in rows for c in r["clients"]))
    head = ["method", *clients, "average", "trainable", "sent/client/round", "s/round"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    # bold marks the best federated headline row: not a pooled-data reference, not a sub-score
    contenders = [r["average"][0] for r in rows if not r.get("sub") and r["method"] not in POOLED]
    best = max(contenders) if contenders else None
    local = next((r["average"][0] for r in rows if r["method"] in LOCAL_ONLY), None)
    for r in rows:
        avg = _cell(r["average"])
        if r["average"][0] == best and not r.get("sub") and r["method"] not in POOLED:
            avg = f"**{avg}**"
        if local is not None and r["method"] not in LOCAL_ONLY and r["average"][0] < local:
            avg += " †"
        if r.get("partial"):
            avg += " ‡"
        cells = [_cell(r["clients"][c], r.get("client_seeds", {}).get(c), r["seeds"]) if c in r["clients"] else "-"
                 for c in clients]
        lines.append("| " + " | ".join([
            r["method"], *cells, avg, f"{r['trainable']:,}",
            f"{r['travel']:,} ({r['bytes_up'] / 1e6:.2f} MB)", f"{r['round_s']:.1f}"]) + " |")
    partial = any(r.get("partial") for r in rows)
    return "\n".join(lines) + f"\n\n{metric} in % on each client's own test split (final round), " \
        f"mean ± std over {rows[0]['seeds']} seed(s); average = unweighted mean over clients; " \
        "bold = best federated method (centralized is the pooled-data upper bound)." \
        + (" † = average below local-only (no communication at all)." if local is not None else "") \
        + (" ‡ = a client was missing from a seed's final round: that seed's average is over the clients "
           "present; (k/n) = a client's score over the k of n seeds it reported in." if partial else "") + "\n"


def plot_average(runs: dict[str, list[dict[str, Any]]], path: Path, title: str, metric: str = "acc") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colors = plt.get_cmap("tab20").colors  # 11+ methods: the default 10-colour cycle would repeat
    for i, (method, seeds) in enumerate(runs.items()):
        curves = [{r["round"]: r["avg"][metric] for r in s["history"] if "avg" in r} for s in seeds]
        # seeds need not have evaluated the same rounds (every client missing one): NaN where one has none
        xs = sorted(set().union(*curves))
        ys = np.array([[c.get(x, np.nan) for x in xs] for c in curves]) * 100
        mean, std = np.nanmean(ys, 0), np.nanstd(ys, 0)
        # the first ten methods get tab20's dark shades, the next ten its light shades, dashed
        color = colors[(2 * i) % 20 + (i // 10) % 2]
        ax.plot(xs, mean, marker="o", ms=3, label=method, color=color, linestyle="-" if i < 10 else "--")
        if len(seeds) > 1:
            ax.fill_between(xs, mean - std, mean + std, alpha=0.15, color=color)
    ax.set_xlabel("round")
    ax.set_ylabel(f"average test {metric} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
