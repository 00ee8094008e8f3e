"""FedDAT's cost per round against FedAvg-adapter, measured side by side.

Both algorithms are built on the same clients and model; one client's local
update (a whole round of its training) is timed alternately under each,
``--repeats`` times, so a noisy shared machine slows both alike. Reports the
median seconds per client round and their ratio (issue 8, figure 3: the naive
cost is about 2.5x, 3 forward + 2 backward passes against 1 + 1). ``feddat-3pass`` is FedDAT
with ``algorithm.feddat_shared_pass=false``: on the VL base (frozen connector) the default
shares one encoder forward between the teacher and the A_C step.

    .venv/bin/python benchmarks/feddat_cost.py [--repeats 5] [key=value ...]
    .venv/bin/python benchmarks/feddat_cost.py --repeats 1 model.name=tiny   # smoke

Writes ``benchmarks/results/feddat_cost.json`` (or ``$FEDVL_BENCH_OUT``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import fedvl  # noqa: F401  (thread wait policy before torch)
from fedvl.algorithms.base import ClientContext
from fedvl.config import load_config
from fedvl.models.params import get_params, set_params
from fedvl.transport.inprocess import build_federation

OUT = Path(os.environ.get("FEDVL_BENCH_OUT", Path(__file__).resolve().parent / "results" / "feddat_cost.json"))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    feds = {}
    # feddat-3pass: the three encoder passes per batch even where one forward could serve teacher and A_C
    variants = {"fedavg": ["algorithm.name=fedavg"], "feddat": ["algorithm.name=feddat"],
                "feddat-3pass": ["algorithm.name=feddat", "algorithm.feddat_shared_pass=false"]}
    for algo, extra in variants.items():
        cfg = load_config(None, extra + ["model.peft=adapter"] + args.overrides)
        feds[algo] = build_federation(cfg, status=lambda s: None)
    torch.set_num_threads(feds["fedavg"].cfg.run.threads)
    cid = next(iter(feds["fedavg"].train))
    times: dict[str, list[float]] = {a: [] for a in feds}
    compute: dict[str, list[float]] = {a: [] for a in feds}
    for rep in range(args.repeats + 1):  # repeat 0 warms up and is not counted
        for algo, fed in feds.items():
            start_params = get_params(fed.model, fed.trainable)
            global_params = get_params(fed.model, fed.travel)
            ctx = ClientContext(cid, fed.model, fed.train[cid], fed.cfg, rep + 1, global_params, fed.travel,
                                fed.trainable, torch.Generator().manual_seed(rep))
            t0 = time.perf_counter()
            res = fed.client.fit(ctx)
            dt = time.perf_counter() - t0
            set_params(fed.model, start_params)  # every repeat trains from the same point
            if rep:
                times[algo].append(dt)
                compute[algo].append(res.metrics["compute_s"])
    med = {a: statistics.median(t) for a, t in times.items()}
    med_c = {a: statistics.median(t) for a, t in compute.items()}
    result = {
        "overrides": args.overrides, "repeats": args.repeats, "client": cid,
        "samples": len(feds["fedavg"].train[cid]),
        "client_round_s": med, "compute_s": med_c,
        "ratio_round": med["feddat"] / med["fedavg"], "ratio_compute": med_c["feddat"] / med_c["fedavg"],
        "ratio_round_3pass": med["feddat-3pass"] / med["fedavg"],
        "ratio_compute_3pass": med_c["feddat-3pass"] / med_c["fedavg"],
        "raw_s": times,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"one client round ({result['samples']} samples), median of {args.repeats}, interleaved:")
    print(f"  fedavg-adapter {med['fedavg']:.2f} s   feddat {med['feddat']:.2f} s   "
          f"ratio {result['ratio_round']:.2f}x (compute only {result['ratio_compute']:.2f}x)")
    print(f"  feddat with three encoder passes {med['feddat-3pass']:.2f} s   ratio {result['ratio_round_3pass']:.2f}x "
          f"(compute only {result['ratio_compute_3pass']:.2f}x)")
    print(f"written: {OUT}")
    return result


if __name__ == "__main__":
    main()
