"""fedvl's performance suite (issue 8): seven figures, each a ratio measured side by side in
one run on this machine, checked against its target.

    .venv/bin/python benchmarks/run.py                 # default model, ~10 min on 2 cores
    .venv/bin/python benchmarks/run.py --quick         # tiny model, ~1 min (the smoke test)
    .venv/bin/python benchmarks/run.py --only 1,3 --docs

1. framework overhead: in-process run wall / the clients' forward+backward+optimiser time (<= 1.05)
2. training loop efficiency: fedvl's local training vs a minimal hand-written loop, samples/s (>= 0.95)
3. FedDAT cost: time per client round relative to FedAvg-adapter (<= 2.0)
4. communication: bytes up per client per round, each PEFT method relative to full fine-tuning
   (adapter methods <= 3%), and with half-precision transport (half)
5. scale: peak memory of 1,000 clients relative to 10, same per-round work (<= 1.2); time per round
6. against Flower: the same FedAvg experiment, Flower simulation and deployment vs the simulator
7. startup: `fedvl run` to the first training step, cold and warm feature cache

Writes ``benchmarks/results/suite.json`` and ``suite.md`` (or under ``$FEDVL_BENCH_OUT``, a folder);
``--docs`` also puts the table into docs/performance.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the single-figure scripts beside this one

import fedvl  # noqa: E402,F401  (thread wait policy before torch)
import torch  # noqa: E402

from fedvl.config import load_config  # noqa: E402

OUT = Path(os.environ.get("FEDVL_BENCH_OUT", HERE / "results"))
FEDVL = str(Path(sys.executable).parent / "fedvl")
DOCS = HERE.parent / "docs" / "performance.md"
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"

# a small experiment on the default model: 4 clients x 48 questions, batch 16 (3 steps per client round);
# these figures are CPU figures (the hand-written loop of figure 2 feeds CPU batches): the GPU has
# its own check, benchmarks/device.py
FULL = ["model.name=default", "data.num_clients=4", "data.train_images=16", "data.test_images=16",
        "algorithm.batch_size=16", "algorithm.rounds=3", "run.device=cpu"]
QUICK = ["model.name=tiny", "data.num_clients=4", "data.train_images=8", "data.test_images=8",
         "data.image_size=64", "algorithm.batch_size=8", "algorithm.rounds=2", "run.device=cpu"]


def _fed(base: list[str], extra: list[str]):
    from fedvl.transport.inprocess import build_federation

    return build_federation(load_config(None, base + extra), status=lambda s: None)


def fig_overhead(base: list[str], tmp: Path) -> dict[str, Any]:
    """Everything the simulator does besides the clients' forward/backward/optimiser work: state
    load/save, aggregation, validation, checkpoints, history. Data is built before timing (setup)."""
    from fedvl.report.history import History
    from fedvl.transport.inprocess import simulate

    fed = _fed(base, ["algorithm.name=fedavg", "model.peft=adapter", "run.eval_every=1"])
    for cid in fed.client_ids:  # setup, not overhead: make every client's data now
        fed.train[cid], fed.test[cid]
    eval_s = [0.0]
    inner = fed.client.evaluate

    def timed_eval(ctx, data):  # evaluation forward passes are client compute too
        t0 = time.perf_counter()
        out = inner(ctx, data)
        eval_s[0] += time.perf_counter() - t0
        return out

    fed.client.evaluate = timed_eval
    run_dir = tmp / "overhead"
    run_dir.mkdir()
    t0 = time.perf_counter()
    simulate(fed, run_dir, History(run_dir))
    wall = time.perf_counter() - t0
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    compute = sum(r["compute_s"] for r in rounds) + eval_s[0]
    ratio = wall / compute
    return {"value": ratio, "target": "<= 1.05", "holds": ratio <= 1.05, "wall_s": wall, "train_compute_s":
            compute - eval_s[0], "eval_compute_s": eval_s[0], "rounds": len(rounds)}


def fig_loop(base: list[str], repeats: int) -> dict[str, Any]:
    """fedvl's train_local + cross_entropy_step against the loop anyone would write by hand."""
    import torch.nn.functional as F

    from fedvl.algorithms.base import ClientContext
    from fedvl.models.params import get_params, set_params

    fed = _fed(base, ["algorithm.name=fedavg", "model.peft=adapter", "algorithm.local_steps=6"])
    cfg, cid = fed.cfg, fed.client_ids[0]
    data, start = fed.train[cid], get_params(fed.model, fed.trainable)
    steps, bs = cfg.algorithm.local_steps, cfg.algorithm.batch_size
    named = dict(fed.model.named_parameters())

    def fedvl_loop() -> float:
        ctx = ClientContext(cid, fed.model, data, cfg, 1, {}, fed.travel, fed.trainable, torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        res = fed.client.train(ctx)
        return res.samples / (time.perf_counter() - t0)

    def hand_loop() -> float:
        model = fed.model
        opt = torch.optim.AdamW([named[n] for n in fed.trainable], lr=cfg.algorithm.lr)
        gen = torch.Generator().manual_seed(0)
        model.train()
        t0 = time.perf_counter()
        samples, perm = 0, torch.randperm(len(data), generator=gen)
        for i in range(steps):
            idx = perm[(i * bs) % len(data):][:bs]
            if len(idx) < bs:
                perm = torch.randperm(len(data), generator=gen)
                idx = perm[:bs]
            x = data.batch(idx)
            loss = F.cross_entropy(model(x["input_ids"], x["attention_mask"], x["features"], task=data.task),
                                   x["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            samples += len(idx)
        return samples / (time.perf_counter() - t0)

    rates: dict[str, list[float]] = {"fedvl": [], "hand": []}
    for rep in range(repeats + 1):  # interleaved; repeat 0 warms up
        for name, fn in (("fedvl", fedvl_loop), ("hand", hand_loop)):
            r = fn()
            set_params(fed.model, start)
            if rep:
                rates[name].append(r)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["fedvl"] / med["hand"]
    return {"value": ratio, "target": ">= 0.95", "holds": ratio >= 0.95, "samples_per_s": med, "steps": steps,
            "batch_size": bs, "raw": rates}


def fig_feddat(base: list[str], repeats: int) -> dict[str, Any]:
    import feddat_cost

    feddat_cost.OUT = OUT / "feddat_cost.json"
    r = feddat_cost.main(["--repeats", str(repeats)] + base)
    return {"value": r["ratio_round"], "target": "<= 2.0", "holds": r["ratio_round"] <= 2.0,
            "compute_ratio": r["ratio_compute"], "client_round_s": r["client_round_s"]}


def fig_communication(base: list[str]) -> dict[str, Any]:
    sizes = {}
    for peft in ("full", "adapter", "lora", "bitfit", "layernorm", "prompt", "head"):
        sizes[peft] = _fed(base, ["algorithm.name=fedavg", f"model.peft={peft}"]).param_report()[
            "bytes_up_per_client_round"]
    half = _fed(base, ["algorithm.name=fedavg", "model.peft=adapter", "run.transport_dtype=float16"]).param_report()[
        "bytes_up_per_client_round"]
    # FedDAT sends its shared adapter only; FedAvg also sends the new connector and answer head
    feddat = _fed(base, ["algorithm.name=feddat", "model.peft=adapter"])
    sizes["feddat (A_S)"] = feddat.param_report()["bytes_up_per_client_round"]
    from fedvl.models.params import get_params, nbytes, param_group

    by_group: dict[str, int] = {}
    for n, t in get_params(feddat.model, feddat.trainable).items():
        g = param_group(n).split(".")[0]
        by_group[g] = by_group.get(g, 0) + nbytes({n: t})
    rel = {k: v / sizes["full"] for k, v in sizes.items()}
    worst = max(rel["adapter"], rel["lora"])
    return {"value": worst, "target": "adapter methods <= 0.03 of full", "holds": worst <= 0.03, "bytes_up": sizes,
            "relative_to_full": rel, "adapter_float16_bytes_up": half, "float16_over_float32": half / sizes["adapter"],
            "trainable_bytes_by_group": by_group}


def _scale_worker(n: int, base: list[str], cache: str) -> dict[str, Any]:
    """One process, one federation of ``n`` clients, 10 sampled per round; its own peak memory."""
    from fedvl.report.history import History
    from fedvl.transport.inprocess import build_federation, run_round
    from fedvl.rounds.state import ClientStateStore
    from fedvl.models.params import get_params

    cfg = load_config(None, base + [f"data.num_clients={n}", "data.cycle_variants=true", "algorithm.name=feddat",
                                     "data.train_images=8", f"algorithm.fraction_fit={10 / n}", "run.eval_clients=10", "run.eval_every=1000",
                                     "algorithm.rounds=4", f"run.cache_dir={cache}"])
    t0 = time.perf_counter()
    fed = build_federation(cfg, status=lambda s: None)
    setup = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        store, g, rounds = ClientStateStore(Path(d) / "states"), get_params(fed.model, fed.travel), []
        history = History(Path(d))
        for rnd in range(1, cfg.algorithm.rounds + 1):
            built = fed.train.build_s + fed.test.build_s
            g, rec = run_round(fed, store, rnd, g)
            history.append(rec)
            rounds.append({"time_s": rec["time_s"], "data_build_s": fed.train.build_s + fed.test.build_s - built})
    return {"clients": n, "setup_s": setup, "rounds": rounds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def fig_scale(base: list[str], tmp: Path) -> dict[str, Any]:
    runs = {}
    for n in (10, 1000):  # each in a fresh process, so each peak is its own
        r = subprocess.run([sys.executable, __file__, "--scale-worker", str(n), "--cache", str(tmp / "scale-cache"),
                            "--base", json.dumps(base)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"scale worker ({n} clients) failed: {r.stderr[-800:]}")
        runs[n] = json.loads(r.stdout.strip().splitlines()[-1])
    mem = runs[1000]["peak_rss_mb"] / runs[10]["peak_rss_mb"]
    med = {n: statistics.median(x["time_s"] for x in r["rounds"][1:]) for n, r in runs.items()}
    med_ex = {n: statistics.median(x["time_s"] - x["data_build_s"] for x in r["rounds"][1:]) for n, r in runs.items()}
    return {"value": mem, "target": "<= 1.2", "holds": mem <= 1.2, "peak_rss_mb": {n: r["peak_rss_mb"] for n, r in
            runs.items()}, "round_s_median": med, "round_s_median_without_data_builds": med_ex,
            "round_time_ratio": med[1000] / med[10], "round_time_ratio_without_data_builds": med_ex[1000] / med_ex[10],
            "runs": runs}


def fig_flower(extra: list[str]) -> dict[str, Any]:
    """The tiny model's localhost deployment (serve runs the ServerApp, fedvl's node executors) against
    its in-process run, its nodes started beside it (the figure) and the next run on the same nodes;
    the Flower simulation and Flower's own processes beside them (benchmarks/flower_overhead.py)."""
    import flower_overhead

    flower_overhead.OUT = OUT / "flower_overhead.json"
    r = flower_overhead.main(extra)
    ratio = r["ratio_to_simulator"]["deployment-warm"]
    tiny = r["models"]["tiny"]
    return {"value": ratio, "target": f"<= {flower_overhead.TARGETS['tiny']}",
            "holds": ratio <= flower_overhead.TARGETS["tiny"], "ratio_to_simulator": r["ratio_to_simulator"],
            "next_run_ratio": r["ratio_to_simulator"]["deployment-warm-next"],
            "wall_s": r["wall_s"], "per_message_overhead_s": tiny["per_message_overhead_s"],
            "flower_sim_metrics_identical": r["flower_sim_metrics_identical"],
            "metrics_identical": tiny["metrics_identical"], "import_flower_runtime_s": r["import_flower_runtime_s"],
            "clientapp_processes": r["clientapp_processes"], "serverapp_processes": r["serverapp_processes"]}


def fig_startup(base: list[str], tmp: Path) -> dict[str, Any]:
    """Spawn `fedvl run` and read the wall clock of its first training step from summary.json."""
    out = {}
    cache = tmp / "startup-cache"
    for which in ("cold", "warm"):  # cold: empty feature cache; warm: the same cache again
        name = f"startup-{which}"
        args = base + ["algorithm.rounds=1", "algorithm.local_steps=1", f"run.cache_dir={cache}",
                       f"run.output_dir={tmp}", f"run.name={name}"]
        t0 = time.time()
        r = subprocess.run([FEDVL, "run", *args, "--quiet"], capture_output=True, text=True, cwd=tmp)
        if r.returncode != 0:
            raise RuntimeError(f"fedvl run failed: {r.stderr[-800:]}")
        s = json.loads((tmp / name / "summary.json").read_text())
        out[which] = {"to_first_step_s": s["first_step_unix"] - t0, "setup_s": s["setup_s"],
                      "imports_and_cli_s": s["started_unix"] - t0}
    imp = subprocess.run([sys.executable, "-X", "importtime", "-c", "import fedvl.cli, fedvl.transport.inprocess"], capture_output=True,
                         text=True)
    top = sorted(((int(p[1]), p[2].strip()) for p in (ln.split("|") for ln in imp.stderr.splitlines()[1:])
                  if len(p) == 3 and p[1].strip().isdigit()), reverse=True)[:5]
    return {"value": out["warm"]["to_first_step_s"], "target": "report", "holds": None, **out,
            "slowest_imports_us": [{"module": m, "cumulative_us": us} for us, m in top]}


FIGURES = {1: "framework overhead", 2: "training loop efficiency", 3: "FedDAT cost", 4: "communication",
           5: "scale (1,000 vs 10 clients)", 6: "against Flower (deployment)", 7: "startup"}


def markdown(results: dict[str, Any], quick: bool) -> str:
    fmt = {1: "{:.3f}x", 2: "{:.3f}x", 3: "{:.2f}x", 4: "{:.2%} of full", 5: "{:.2f}x peak memory",
           6: "{:.2f}x wall", 7: "{:.1f} s (warm)"}
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, "
             f"{'tiny model (--quick)' if quick else 'default model'}; `python benchmarks/run.py`.", "",
             "| # | figure | value | target | holds |", "|---|---|---|---|---|"]
    for k, r in results.items():
        if "error" in r:
            lines.append(f"| {k} | {FIGURES[k]} | error: {r['error']} | | no |")
            continue
        holds = {True: "yes", False: "**no**", None: "(report)"}[r["holds"]]
        lines.append(f"| {k} | {FIGURES[k]} | {fmt[k].format(r['value'])} | {r['target']} | {holds} |")
    return "\n".join(lines) + "\n"


def write_docs(table: str) -> None:
    text = DOCS.read_text() if DOCS.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    DOCS.write_text(f"{head}{BEGIN}\n{table}{END}{rest.split(END, 1)[1]}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny model and tiny data (smoke run, about a minute)")
    ap.add_argument("--only", default="", help="comma-separated figure numbers (default: all seven)")
    ap.add_argument("--repeats", type=int, default=0, help="interleaved repeats for figures 2 and 3 (default 5, quick 1)")
    ap.add_argument("--docs", action="store_true", help="also write the table into docs/performance.md")
    ap.add_argument("--scale-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.scale_worker:
        print(json.dumps(_scale_worker(args.scale_worker, json.loads(args.base), args.cache)))
        return {}
    only = [int(x) for x in args.only.split(",") if x] or list(FIGURES)
    bad = [k for k in only if k not in FIGURES]
    if bad:
        ap.error(f"--only: no figure {bad[0]} (figures 1-7)")
    repeats = args.repeats or (1 if args.quick else 5)
    base = QUICK if args.quick else FULL
    results: dict[int, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = base + [f"run.cache_dir={tmp / 'cache'}", f"run.output_dir={tmp / 'runs'}"]
        plan = {1: lambda: fig_overhead(base, tmp), 2: lambda: fig_loop(base, repeats),
                3: lambda: fig_feddat(base, repeats), 4: lambda: fig_communication(base),
                5: lambda: fig_scale(QUICK if args.quick else FULL, tmp),
                6: lambda: fig_flower(["data.train_images=8", "data.test_images=4"] if args.quick else []),
                7: lambda: fig_startup(QUICK if args.quick else FULL, tmp)}
        for k in only:
            print(f"[{k}/7] {FIGURES[k]} ...", flush=True)
            t0 = time.perf_counter()
            try:
                results[k] = plan[k]()
            except Exception as e:  # one broken figure must not lose the others
                results[k] = {"error": f"{type(e).__name__}: {e}"}
            results[k]["bench_s"] = time.perf_counter() - t0
    table = markdown(results, args.quick)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "suite.json").write_text(json.dumps({"quick": args.quick, "results": results}, indent=2, default=str))
    (OUT / "suite.md").write_text(table)
    if args.docs:
        write_docs(table)
    print(table)
    print(f"written: {OUT / 'suite.json'}")
    return results


if __name__ == "__main__":
    main()
