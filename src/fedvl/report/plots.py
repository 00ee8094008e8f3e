"""Accuracy per round per client (and the average), as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_accuracy(rounds: list[dict[str, Any]], path: Path, title: str, metric: str = "acc") -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    from fedvl.report.history import client_rounds, missed_rounds

    rounds = [r for r in rounds if "eval" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs = [r["round"] for r in rounds]
    for cid in client_rounds(rounds):
        # NaN where the client is absent: its line breaks there instead of joining over the gap
        ys = [100 * r["eval"][cid][metric] if cid in r["eval"] else float("nan") for r in rounds]
        ax.plot(xs, ys, marker="o", ms=3, lw=1.2, alpha=0.8, label=cid)
    label = "average of the clients present" if missed_rounds(rounds) else "average"
    ax.plot(xs, [100 * r["avg"][metric] for r in rounds], color="black", lw=2.4, label=label)
    ax.xaxis.get_major_locator().set_params(integer=True)  # rounds are whole numbers
    ax.set_xlabel("round")
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
