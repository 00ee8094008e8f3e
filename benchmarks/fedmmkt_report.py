"""Per-round tables of a FedMMKT comparison folder (written by `fedvl compare configs/fedmmkt.yaml ...`).

    .venv/bin/fedvl compare configs/fedmmkt.yaml --algorithms fedmmkt,kt-distill,kt-local,kt-fedavg --seeds 0
    .venv/bin/python benchmarks/fedmmkt_report.py results/compare-fedmmkt [--json out.json]

Prints markdown: client average accuracy per round per method (mean over seeds), the generator's
fidelity on the client domains per round (judge accuracy on generated images, feature distance),
and where a round's time goes (median seconds: generation, client training, generator update,
evaluation). Reads only the run folders; runs nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(folder: Path) -> dict[str, list[list[dict]]]:
    runs: dict[str, list[list[dict]]] = {}
    for method_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for seed_dir in sorted(method_dir.glob("seed*")):
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--json", type=Path)
    ns = ap.parse_args()
    runs = load(ns.folder)
    acc = per_round(runs, lambda r: 100 * r["avg"]["acc"])
    gen_runs = {m: s for m, s in runs.items() if any("generator" in r for r in s[0])}
    judge = per_round(gen_runs, lambda r: 100 * r["generator"]["judge_acc"] if "generator" in r else None)
    dist = per_round(gen_runs, lambda r: r["generator"]["feature_distance"] if "generator" in r else None)
    timing = {m: {k: statistics.median([r["timing"].get(k, 0.0) for s in seeds for r in s])
                  for k in ("generate_s", "clients_s", "generator_update_s", "eval_s")}
              | {"round_s": statistics.median([r["time_s"] for s in seeds for r in s])}
              for m, seeds in runs.items()}
    seeds = {m: len(s) for m, s in runs.items()}
    print(f"seeds per method: {seeds}\n")
    print("Client average test accuracy (%) per round\n\n" + table(acc, "{:.1f}") + "\n")
    print("Generator: judge accuracy on generated images (%) per round\n\n" + table(judge, "{:.1f}") + "\n")
    print("Generator: feature distance to real client-domain images per round\n\n" + table(dist, "{:.2f}") + "\n")
    print("| method | round s | generation s | client training s | generator update s | evaluation s |")
    print("|---|---|---|---|---|---|")
    for m, t in timing.items():
        print(f"| {m} | {t['round_s']:.1f} | {t['generate_s']:.1f} | {t['clients_s']:.1f} | "
              f"{t['generator_update_s']:.1f} | {t['eval_s']:.1f} |")
    if ns.json:
        ns.json.write_text(json.dumps({"acc": acc, "judge_acc": judge, "feature_distance": dist,
                                       "timing": timing, "seeds": seeds}, indent=1))


if __name__ == "__main__":
    main()
