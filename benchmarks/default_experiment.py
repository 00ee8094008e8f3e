"""The default experiment against its two references, side by side in one run.

Runs the embedded default (FedAvg over adapters, Domain benchmark) and the same
clients under local-only and centralized training, then writes
``benchmarks/results/default_experiment.json`` and prints a markdown table:
wall time, final average accuracy / balanced accuracy, and the fraction of
parameters that train and that travel.

    .venv/bin/python benchmarks/default_experiment.py [key=value ...]
    .venv/bin/python benchmarks/default_experiment.py model.name=tiny algorithm.rounds=2   # smoke
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import fedvl  # noqa: F401  (thread wait policy before torch)
from fedvl.config import load_config
from fedvl.experiment import run_experiment

# FEDVL_BENCH_OUT redirects the JSON (the smoke test uses it to keep real results intact)
OUT = Path(os.environ.get("FEDVL_BENCH_OUT", Path(__file__).resolve().parent / "results" / "default_experiment.json"))


def main(overrides: list[str]) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in ("fedavg", "local", "centralized"):
            cfg = load_config(None, [f"algorithm.name={algo}", f"run.output_dir={tmp}", f"run.name={algo}"]
                              + overrides)
            s = run_experiment(cfg, Path(tmp) / algo, progress_enabled=False)
            rows[algo] = {
                "wall_s": s["wall_s"], "setup_s": s["setup_s"],
                "avg_acc": s["final"]["avg"]["acc"], "avg_bal_acc": s["final"]["avg"]["bal_acc"],
                "per_client_acc": {c: m["acc"] for c, m in s["final"]["eval"].items()},
                "trainable_frac": s["params"]["trainable_frac"], "travel_frac": s["params"]["travel_frac"],
                "trainable_params": s["params"]["trainable_params"], "total_params": s["params"]["total_params"],
            }
    result = {"overrides": overrides, "rows": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print("| method | avg acc % | avg bal acc % | wall s | trains % | travels % |")
    print("|---|---|---|---|---|---|")
    for algo, r in rows.items():
        print(f"| {algo} | {100 * r['avg_acc']:.1f} | {100 * r['avg_bal_acc']:.1f} | {r['wall_s']:.0f} | "
              f"{100 * r['trainable_frac']:.2f} | {100 * r['travel_frac']:.2f} |")
    print(f"written: {OUT}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
