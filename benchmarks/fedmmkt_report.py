"""Per-round tables of a FedMMKT comparison folder (written by `fedvl compare configs/fedmmkt.yaml ...`).

    .venv/bin/fedvl compare configs/fedmmkt.yaml --algorithms fedmmkt,kt-distill,kt-local,kt-fedavg --seeds 0
    .venv/bin/python benchmarks/fedmmkt_report.py results/compare-fedmmkt [more folders] [--json out.json]
        [--plots docs/fedmmkt]

Several folders are merged (a method found in two: the later folder's seeds are added).

Prints markdown: client average accuracy per round per method (mean over seeds), the generator's
fidelity on the client domains per round (judge accuracy on generated images, feature distance),
and where a round's time goes (median seconds: generation, client training, generator update,
evaluation), the final accuracy per client (mean ± standard deviation over seeds) and, when ``kt-local`` is among
the methods, the issue-17 bar: the average above kt-local and kt-distill by more than the seed spread, and no
client more than 2 points below its own local-only mean. ``--plots PREFIX`` writes PREFIX-accuracy.png and
PREFIX-fidelity.png. Reads only the run folders; runs nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(folder: Path, runs: dict[str, list[list[dict]]] | None = None) -> dict[str, list[list[dict]]]:
    runs = {} if runs is None else runs
    for method_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for seed_dir in sorted(method_dir.glob("seed*")):
            if not (seed_dir / "metrics.jsonl").is_file():
                continue
            lines = (seed_dir / "metrics.jsonl").read_text().splitlines()
            runs.setdefault(method_dir.name, []).append([json.loads(x) for x in lines if x.strip()])
    return runs


def per_round(runs: dict[str, list[list[dict]]], get) -> dict[str, list[float | None]]:
    out = {}
    for m, seeds in runs.items():
        rounds = min(len(s) for s in seeds)
        vals = []
        for r in range(rounds):
            xs = [get(s[r]) for s in seeds if get(s[r]) is not None]
            vals.append(statistics.mean(xs) if xs else None)
        out[m] = vals
    return out


def table(rows: dict[str, list[float | None]], fmt: str) -> str:
    n = max(len(v) for v in rows.values())
    lines = ["| method | " + " | ".join(f"r{i + 1}" for i in range(n)) + " |", "|---" * (n + 1) + "|"]
    for m, vals in rows.items():
        lines.append(f"| {m} | " + " | ".join("-" if v is None else fmt.format(v) for v in vals) + " |")
    return "\n".join(lines)


def final_table(runs: dict[str, list[list[dict]]], rounds: int | None, window: int = 1) -> tuple[str, dict]:
    """Accuracy per client at the final round (``window`` = 1) or averaged over the last ``window`` rounds (steadier:
    one round moves a client of 150 test images by up to 15 points): mean ± sd over the seeds that finished."""
    out: dict = {}
    for m, seeds in runs.items():
        full = [s for s in seeds if rounds is None or len(s) >= rounds]
        if not full:
            continue
        clients = list(full[0][-1]["eval"])
        per = {c: [100 * statistics.mean(r["eval"][c]["acc"] for r in s[-window:]) for s in full] for c in clients}
        avg = [100 * statistics.mean(r["avg"]["acc"] for r in s[-window:]) for s in full]
        sd = statistics.stdev if len(full) > 1 else statistics.pstdev  # sample sd, as `fedvl compare` reports
        out[m] = {"clients": {c: (statistics.mean(v), sd(v)) for c, v in per.items()},
                  "avg": (statistics.mean(avg), sd(avg)), "avg_seeds": avg, "n": len(full)}
    if not out:
        return "", out
    clients = list(next(iter(out.values()))["clients"])
    lines = ["| method | " + " | ".join(clients) + " | average | seeds |", "|---" * (len(clients) + 3) + "|"]
    for m, v in out.items():
        cells = [f"{a:.1f} ± {sd:.1f}" for a, sd in v["clients"].values()]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | **{v['avg'][0]:.1f} ± {v['avg'][1]:.1f}** | {v['n']} |")
    return "\n".join(lines), out


def bar(final: dict, method: str = "fedmmkt") -> list[str]:
    """The issue-17 bar, each condition with its numbers."""
    if method not in final or "kt-local" not in final:
        return []
    f, notes = final[method], []
    for ref in ("kt-local", "kt-distill"):
        if ref in final:
            r = final[ref]
            spread = max(f["avg"][1], r["avg"][1])
            gap = f["avg"][0] - r["avg"][0]
            notes.append(f"{method} - {ref}: {gap:+.1f} points (seed spread, larger sd: {spread:.1f}) -> "
                         f"{'met' if gap > spread else 'NOT met'}")
    worst = min((f["clients"][c][0] - final["kt-local"]["clients"][c][0], c) for c in f["clients"])
    notes.append(f"worst client against its local-only mean: {worst[1]} {worst[0]:+.1f} points -> "
                 f"{'met' if worst[0] >= -2 else 'NOT met'}")
    return notes


def plots(acc: dict, dist: dict, judge: dict, prefix: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    for m, vals in acc.items():
        ax.plot(range(1, len(vals) + 1), vals, marker="o", ms=3, label=m)
    ax.set(xlabel="round", ylabel="client average test accuracy (%)", title="FedMMKT family, mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{prefix}-accuracy.png")
    plt.close(fig)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for m, dvals in dist.items():
        xs = [i + 1 for i, v in enumerate(dvals) if v is not None]
        a.plot(xs, [dvals[i - 1] for i in xs], marker="o", ms=3, label=m)
        b.plot(xs, [judge[m][i - 1] for i in xs], marker="o", ms=3, label=m)
    a.set(xlabel="round", ylabel="feature distance to real client-domain images", title="lower is closer")
    b.set(xlabel="round", ylabel="judge accuracy on generated (%)", title="prompt fidelity (saturated)")
    for x in (a, b):
        x.grid(alpha=0.3)
        x.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{prefix}-fidelity.png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", type=Path, nargs="+")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plots", type=Path, help="write PREFIX-accuracy.png and PREFIX-fidelity.png")
    ap.add_argument("--rounds", type=int, default=None, help="count only seeds that finished this many rounds")
    ns = ap.parse_args()
    runs: dict[str, list[list[dict]]] = {}
    for folder in ns.folders:
        load(folder, runs)
    if ns.rounds:
        runs = {m: [s for s in v if len(s) >= ns.rounds] for m, v in runs.items()}
        runs = {m: v for m, v in runs.items() if v}
    acc = per_round(runs, lambda r: 100 * r["avg"]["acc"])
    gen_runs = {m: s for m, s in runs.items() if any("generator" in r for r in s[0])}
    judge = per_round(gen_runs, lambda r: 100 * r["generator"]["judge_acc"] if "generator" in r else None)
    dist = per_round(gen_runs, lambda r: r["generator"]["feature_distance"] if "generator" in r else None)
    agree = per_round(gen_runs, lambda r: 100 * r["server"]["ensemble_agrees"] if "ensemble_agrees" in r.get("server", {})
                      else None)
    timing = {m: {k: statistics.median([r["timing"].get(k, 0.0) for s in seeds for r in s])
                  for k in ("generate_s", "clients_s", "generator_update_s", "eval_s")}
              | {"round_s": statistics.median([r["time_s"] for s in seeds for r in s])}
              for m, seeds in runs.items()}
    seeds = {m: len(s) for m, s in runs.items()}
    print(f"seeds per method: {seeds}\n")
    text, final = final_table(runs, ns.rounds)
    print("Final test accuracy (%), mean ± sd over seeds\n\n" + text + "\n")
    for line in bar(final):
        print("- " + line)
    text3, final3 = final_table(runs, ns.rounds, window=3)
    print("\nMean of the last three rounds (%), mean ± sd over seeds\n\n" + text3 + "\n")
    for line in bar(final3):
        print("- " + line)
    print("\nClient average test accuracy (%) per round\n\n" + table(acc, "{:.1f}") + "\n")
    if gen_runs:
        print("Generator: judge accuracy on generated images (%) per round\n\n" + table(judge, "{:.1f}") + "\n")
        print("Generator: feature distance to real client-domain images per round\n\n" + table(dist, "{:.2f}") + "\n")
        print("Ensemble agrees with the prompt (%) per round\n\n" + table(agree, "{:.1f}") + "\n")
    print("| method | round s | generation s | client training s | generator update s | evaluation s |")
    print("|---|---|---|---|---|---|")
    for m, t in timing.items():
        print(f"| {m} | {t['round_s']:.1f} | {t['generate_s']:.1f} | {t['clients_s']:.1f} | "
              f"{t['generator_update_s']:.1f} | {t['eval_s']:.1f} |")
    if ns.plots:
        plots(acc, dist, judge, ns.plots)
    if ns.json:
        ns.json.write_text(json.dumps({"acc": acc, "judge_acc": judge, "feature_distance": dist, "agree": agree,
                                       "final": final, "bar": bar(final), "last3": final3, "bar_last3": bar(final3), "timing": timing, "seeds": seeds},
                                      indent=1))


if __name__ == "__main__":
    main()
