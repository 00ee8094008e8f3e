"""Accuracy cost of client-level differential privacy (DP-FedAvg, issue 6).

Runs the same experiment without DP and with DP at each ``--noise`` multiplier
(clip ``--clip``; uniform mean, as DP-FedAvg needs) and reports the final
average accuracy and the epsilon spent at ``privacy.delta`` (opacus RDP
accountant, sample rate = algorithm.fraction_fit, one step per round). Writes
``benchmarks/results/privacy_cost.json`` (FEDVL_BENCH_OUT overrides) and a markdown table.

    .venv/bin/python benchmarks/privacy_cost.py --noise 0.5,2 --clip 1.0 [key=value ...]
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

OUT = Path(os.environ.get("FEDVL_BENCH_OUT", Path(__file__).resolve().parent / "results" / "privacy_cost.json"))


def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise", default="0.5,2", help="comma-separated noise multipliers z")
    p.add_argument("--clip", type=float, default=1.0, help="privacy.clip_norm S")
    p.add_argument("overrides", nargs="*")
    ns = p.parse_args(argv)
    settings = [("no DP", [])] + [
        (f"DP z={z}", ["privacy.enabled=true", f"privacy.noise_multiplier={z}", f"privacy.clip_norm={ns.clip}"])
        for z in ns.noise.split(",")]
    rows = {}
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, extra) in enumerate(settings):
            cfg = load_config(None, ns.overrides + ["algorithm.aggregation=uniform", *extra,
                                                    f"run.output_dir={tmp}", f"run.name=r{i}"])
            t0 = time.perf_counter()
            s = run_experiment(cfg, Path(tmp) / f"r{i}", console=quiet, progress_enabled=False)
            priv = s["privacy"] or {}
            rows[label] = {"acc": s["final"]["avg"]["acc"], "bal_acc": s["final"]["avg"]["bal_acc"],
                           "epsilon": priv.get("epsilon"), "delta": priv.get("delta"),
                           "wall_s": time.perf_counter() - t0}
            print(f"  {label:<10} acc {100 * rows[label]['acc']:5.1f}%  epsilon {priv.get('epsilon')}", flush=True)
    result = {"overrides": ns.overrides, "clip": ns.clip, "rows": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    lines = ["| setting | epsilon (delta) | avg acc % | avg bal acc % |", "|---|---|---|---|"]
    for label, r in rows.items():
        eps = f"{r['epsilon']:.2f} ({r['delta']:g})" if r["epsilon"] is not None else "inf"
        lines.append(f"| {label} | {eps} | {100 * r['acc']:.1f} | {100 * r['bal_acc']:.1f} |")
    table = "\n".join(lines) + f"\n\nClip S = {ns.clip:g}; uniform mean. Overrides: {' '.join(ns.overrides)}\n"
    OUT.with_suffix(".md").write_text(table)
    print(table, end="")
    return result


if __name__ == "__main__":
    main()
