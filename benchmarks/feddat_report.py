"""Per-round and final tables of fine-tuning comparison folders (written by `fedvl compare`), for
FedDAT against its baselines: what issue 14 asks the paper's table to say.

    .venv/bin/fedvl compare configs/compare-scene.yaml algorithm.keep_local=head --seeds 0,1,2 \
        --algorithms fedavg-adapter,feddat --name scene-vl
    .venv/bin/fedvl compare configs/compare-scene.yaml algorithm.keep_local=head algorithm.local_epochs=8 \
        --seeds 0,1,2 --algorithms fedavg-adapter --name scene-vl-matched
    .venv/bin/python benchmarks/feddat_report.py results/scene-vl results/scene-vl-matched:"2x epochs"
    .venv/bin/python benchmarks/feddat_report.py results/abl-domain --png kd.png   # also plot the distillation

A folder may carry a label after a colon; its methods are then named ``method (label)``. Prints
markdown: (1) the final client-average accuracy and balanced accuracy per method, mean ± standard
deviation over the seeds each method has, with optimizer steps per client per round (FedDAT takes
two per batch: the A_S step and the A_C step); (2) FedDAT minus each baseline, paired by seed
(mean, and each seed's difference), over the seeds both have; (3) FedDAT's three scores per
evaluated round (DAT = the mixture, A_C alone, A_S alone), mean over seeds; (4) for every FedDAT
run (ablations too), its distillation per round, mean over clients and seeds: the A_S step's CE and
KD(A_S <- teacher), the A_C step's CE and KD(DAT <- A_S), and how often A_S and its teacher pick the
same answer. Reads only the run folders; runs nothing.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def load(spec: str) -> dict[str, dict[int, list[dict]]]:
    """method -> seed -> evaluated round records (complete runs only)."""
    folder, _, label = spec.partition(":")
    out: dict[str, dict[int, list[dict]]] = {}
    for method_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        for seed_dir in sorted(method_dir.glob("seed*")):
            status = seed_dir / "status.json"
            if not status.is_file() or json.loads(status.read_text()).get("state") != "complete":
                continue
            rows = [json.loads(x) for x in (seed_dir / "metrics.jsonl").read_text().splitlines()]
            name = f"{method_dir.name} ({label})" if label else method_dir.name
            out.setdefault(name, {})[int(seed_dir.name[4:])] = rows
    return out


def _avg(record: dict, key: str) -> float:
    return 100 * statistics.fmean(m[key] for m in record["eval"].values())


def _steps(rows: list[dict], feddat: bool) -> int:
    batches = statistics.median(m["steps"] for m in rows[0]["train"].values())
    return int(batches * (2 if feddat else 1))


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {sd:.1f}"


def report(runs: dict[str, dict[int, list[dict]]]) -> str:
    lines = ["| method | seeds | acc | bal_acc | optimizer steps / client / round |", "|---|---|---|---|---|"]
    final = {m: {s: [r for r in rows if "eval" in r][-1] for s, rows in seeds.items()} for m, seeds in runs.items()}
    for m, seeds in runs.items():
        recs = final[m]
        lines.append(f"| {m} | {','.join(map(str, sorted(seeds)))} | {_ms([_avg(r, 'acc') for r in recs.values()])} | "
                     f"{_ms([_avg(r, 'bal_acc') for r in recs.values()])} | "
                     f"{_steps(next(iter(seeds.values())), m.startswith('feddat'))} |")
    out = ["## Final round, client average (mean ± std over seeds)", "", *lines, ""]
    if "feddat" in final:
        out += ["## FedDAT minus each method, paired by seed (accuracy points)", "",
                "| method | seeds | mean difference | per seed |", "|---|---|---|---|"]
        for m in final:
            common = sorted(set(final[m]) & set(final["feddat"]))
            if m == "feddat" or not common:
                continue
            d = [_avg(final["feddat"][s], "acc") - _avg(final[m][s], "acc") for s in common]
            out.append(f"| {m} | {','.join(map(str, common))} | {statistics.fmean(d):+.1f} | "
                       f"{', '.join(f'{x:+.1f}' for x in d)} |")
        out += ["", "## FedDAT's three scores per evaluated round (mean over seeds)", "",
                "| round | DAT | A_C alone | A_S alone |", "|---|---|---|---|"]
        seeds = runs["feddat"]
        for i, rec in enumerate(r for r in next(iter(seeds.values())) if "eval" in r):
            per = [[r for r in rows if "eval" in r][i] for rows in seeds.values()]
            out.append(f"| {rec['round']} | " + " | ".join(f"{statistics.fmean(_avg(p, k) for p in per):.1f}"
                                                           for k in ("acc", "acc_local", "acc_shared")) + " |")
    out += _distillation(runs)
    return "\n".join(out)


# the A_S step's teacher is the DAT mix (A_C alone under algorithm.feddat_teacher=local)
DISTILL = (("ce_shared", "CE(A_S)"), ("kd_shared", "KD(A_S <- teacher)"), ("ce_dat", "CE(DAT)"),
           ("kd_dat", "KD(DAT <- A_S)"), ("agree_shared_dat", "A_S agrees with teacher (%)"))


def distillation(runs: dict[str, dict[int, list[dict]]]) -> dict[str, list[tuple[int, dict[str, float]]]]:
    """FedDAT run name -> [(round, {metric: mean over clients and seeds})]; runs without the metrics are left out."""
    out: dict[str, list[tuple[int, dict[str, float]]]] = {}
    for m, seeds in runs.items():
        first = next(iter(seeds.values()))
        if not any("kd_shared" in c for c in first[0]["train"].values()):
            continue
        out[m] = []
        for i, rec in enumerate(first):
            means = {}
            for key, _ in DISTILL:
                vals = [c[key] for rows in seeds.values() for c in rows[i]["train"].values() if key in c]
                if vals:
                    means[key] = statistics.fmean(vals)
            out[m].append((rec["round"], means))
    return out


def _distillation(runs: dict[str, dict[int, list[dict]]]) -> list[str]:
    out: list[str] = []
    for m, per_round in distillation(runs).items():
        out += ["", f"## {m}: distillation per round (mean over clients and seeds)", "",
                "| round | " + " | ".join(name for _, name in DISTILL) + " |", "|---" * (len(DISTILL) + 1) + "|"]
        for rnd, means in per_round:
            cells = [("-" if key not in means else f"{100 * means[key]:.1f}" if key.startswith("agree")
                      else f"{means[key]:.3f}") for key, _ in DISTILL]
            out.append(f"| {rnd} | " + " | ".join(cells) + " |")
    return out


def plot_distillation(runs: dict[str, dict[int, list[dict]]], path: Path) -> bool:
    """The KD losses and the A_S/teacher agreement per round, one line per FedDAT run; False if none has them."""
    curves = distillation(runs)
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for m, per_round in curves.items():
        rounds = [r for r, _ in per_round]
        for ax, key in zip(axes, ("kd_shared", "kd_dat", "agree_shared_dat")):
            vals = [means.get(key, float("nan")) * (100 if key.startswith("agree") else 1) for _, means in per_round]
            ax.plot(rounds, vals, marker="o", label=m)
    for ax, key in zip(axes, ("kd_shared", "kd_dat", "agree_shared_dat")):
        ax.set_title(dict(DISTILL)[key])
        ax.set_xlabel("round")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="FedDAT against its baselines, from `fedvl compare` folders.")
    parser.add_argument("folders", nargs="+", metavar="FOLDER[:LABEL]")
    parser.add_argument("--png", type=Path, help="also plot the FedDAT runs' distillation per round here")
    ns = parser.parse_args()
    merged: dict[str, dict[int, list[dict]]] = {}
    for spec in ns.folders:
        for m, seeds in load(spec).items():
            merged.setdefault(m, {}).update(seeds)
    print(report(merged))
    if ns.png is not None and not plot_distillation(merged, ns.png):
        sys.exit("feddat_report: no FedDAT run with distillation metrics; no plot written")
