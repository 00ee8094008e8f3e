"""Accuracy under model-poisoning attacks, with and without each defence (issue 6).

For every attack kind (none, sign_flip, scaled, noise: a share ``--fraction`` of
the clients, chosen from the seed, sends a poisoned update; see
``fedvl.algorithms.attacks``) and every defence (plain FedAvg mean, median-norm
clipping, coordinate-wise median, trimmed mean, Krum), runs one experiment and
reports the final accuracy averaged over the honest clients (each on its own
test split) and how many updates the server's validation rejected. Writes
``benchmarks/results/robustness.json`` (FEDVL_BENCH_OUT overrides the path) and
prints a markdown table.

    .venv/bin/python benchmarks/robustness.py [--fraction 0.25] [--scale 5] [key=value ...]
    .venv/bin/python benchmarks/robustness.py model.name=tiny algorithm.rounds=2   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import fedvl  # noqa: F401  (thread wait policy before torch)
from fedvl.config import load_config
from fedvl.experiment import run_experiment

OUT = Path(os.environ.get("FEDVL_BENCH_OUT", Path(__file__).resolve().parent / "results" / "robustness.json"))

DEFENCES = {
    "mean": ["algorithm.aggregator=mean"],
    "clip": ["algorithm.aggregator=mean", "algorithm.clip_to_median=true"],
    "median": ["algorithm.aggregator=median"],
    "trimmed_mean": ["algorithm.aggregator=trimmed_mean"],
    "krum": ["algorithm.aggregator=krum"],
}
ATTACKS = ["none", "sign_flip", "scaled", "noise"]


def run_one(overrides: list[str], tmp: str, name: str) -> dict:
    from rich.console import Console

    cfg = load_config(None, overrides + [f"run.output_dir={tmp}", f"run.name={name}"])
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115  (closed with the process; keeps stdout a table)
    t0 = time.perf_counter()
    s = run_experiment(cfg, Path(tmp) / name, console=quiet, progress_enabled=False)
    evals = s["final"]["eval"]
    honest = [c for c in evals if c not in s["attackers"]]

    def mean(key: str, ids: list[str]) -> float:
        return sum(evals[c][key] for c in ids) / len(ids)

    return {"acc_honest": mean("acc", honest), "bal_acc_honest": mean("bal_acc", honest),
            "acc_all": s["final"]["avg"]["acc"], "rejected": s["rejected_updates"], "attackers": s["attackers"],
            "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--defences", default=",".join(DEFENCES))
    p.add_argument("--fraction", type=float, default=0.25, help="share of attacking clients")
    p.add_argument("--scale", type=float, default=5.0, help="attack.scale")
    p.add_argument("--trim-ratio", type=float, default=0.25, help="trimmed_mean beta (>= 1/clients to trim anything)")
    p.add_argument("--krum-byzantine", type=int, default=1)
    p.add_argument("overrides", nargs="*", help="key=value for every run (e.g. model.name=tiny)")
    ns = p.parse_args(argv)
    attacks, defences = ns.attacks.split(","), ns.defences.split(",")
    common = ns.overrides + [f"attack.fraction={ns.fraction}", f"attack.scale={ns.scale}",
                             f"algorithm.trim_ratio={ns.trim_ratio}", f"algorithm.krum_byzantine={ns.krum_byzantine}"]
    rows: dict[str, dict[str, dict]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for attack in attacks:
            rows[attack] = {}
            for d in defences:
                rows[attack][d] = run_one(common + [f"attack.kind={attack}"] + DEFENCES[d], tmp, f"{attack}-{d}")
                r = rows[attack][d]
                print(f"  {attack:<9} {d:<12} honest acc {100 * r['acc_honest']:5.1f}%  rejected {r['rejected']}  "
                      f"{r['wall_s']:.0f}s", flush=True)
    result = {"overrides": ns.overrides, "fraction": ns.fraction, "scale": ns.scale, "trim_ratio": ns.trim_ratio,
              "krum_byzantine": ns.krum_byzantine, "rows": rows, "wall_s": time.perf_counter() - t0}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    table = markdown(result, defences)
    OUT.with_suffix(".md").write_text(table)
    print(table, end="")
    print(f"written: {OUT} and {OUT.with_suffix('.md')}")
    return result


def markdown(result: dict, defences: list[str]) -> str:
    lines = ["| attack | " + " | ".join(defences) + " |", "|---" * (len(defences) + 1) + "|"]
    for attack, cells in result["rows"].items():
        shown = [f"{100 * c['acc_honest']:.1f}" + (f" ({c['rejected']} rej.)" if c["rejected"] else "")
                 for c in (cells[d] for d in defences)]
        lines.append(f"| {attack} | " + " | ".join(shown) + " |")
    lines.append("")
    lines.append(f"Final test accuracy (%) averaged over the honest clients; attackers: "
                 f"{result['fraction']:g} of the clients, scale {result['scale']:g}; "
                 f"trimmed mean beta {result['trim_ratio']:g}, Krum f = {result['krum_byzantine']}; "
                 f"(n rej.) = updates rejected by validation over the run. Overrides: {' '.join(result['overrides'])}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
