"""The same small experiment under the in-process simulator, Flower's simulation and a localhost
Flower deployment (SuperLink + one `fedvl join` node per client, as separate processes), run back to
back; wall times as ratios to the in-process run, and the per-message overhead of the deployment.

    .venv/bin/python benchmarks/flower_overhead.py [--models tiny,default] [--executors warm,flower] [key=value ...]

Experiments (2 clients, 3 rounds, FedAvg): ``tiny`` (the tiny model) and ``default`` (the default
model on small data). Deployments: ``warm`` (the defaults of `fedvl serve` and `fedvl join`: serve
runs the ServerApp itself, each node's warm executor claims its SuperNode's tasks) and ``flower``
(`--executor flower` on both: Flower's ServerApp process per run and ClientApp process per message).
Each deployment runs twice on one port: first with its nodes started beside ``serve`` (what a first
run pays: every node's start-up too), then the next run on the same nodes, still running (``-next``:
what each further run of a deployment whose nodes stay pays). Per-message overhead: the median over
rounds of (the deployed round's time - the in-process round's time) / 2 (a round is a train and an
evaluate message per client, the clients in parallel): what a message costs from the server's send
to its reply stored, beyond the client's compute.
Targets: the default model deployed <= 1.5x its in-process time, the tiny model <= 2.5x, overhead <= 0.4 s.
Writes ``benchmarks/results/flower_overhead.json`` (or ``$FEDVL_BENCH_OUT``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(os.environ.get("FEDVL_BENCH_OUT", Path(__file__).resolve().parent / "results" / "flower_overhead.json"))
FEDVL = str(Path(sys.executable).parent / "fedvl")
COMMON = ["data.num_clients=2", "data.domains=photo,sketch", "algorithm.rounds=3", "run.threads=1"]
MODELS = {
    "tiny": ["model.name=tiny", "data.train_images=16", "data.test_images=8", "data.image_size=64",
             "algorithm.batch_size=8"],
    "default": ["model.name=default", "data.image_size=96", "data.train_images=48", "data.test_images=24",
                "algorithm.batch_size=16"],
}
TARGETS = {"tiny": 2.5, "default": 1.5}  # deployment / in process
OVERHEAD_TARGET_S = 0.4
DEFAULTS = COMMON + MODELS["tiny"]  # (benchmarks/run.py's figure runs the tiny experiment)


def _timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {r.stderr[-800:] or r.stdout[-800:]}")
    return time.perf_counter() - t0


def _deployment(args: list[str], tmp: Path, name: str, executor: str) -> tuple[float, float]:
    """Wall times of two runs of ``serve`` on one port: the first with its nodes started beside it (a
    first run), the second on the same nodes, still running (a deployment's next run)."""
    from fedvl.deploy.process import free_port, stop

    port = free_port()
    nodes = [subprocess.Popen([FEDVL, "join", "--server", f"127.0.0.1:{port}", "--partition", str(i), "--insecure",
                               "--state-dir", str(tmp / f"{name}-node{i}"), "--executor", executor], cwd=tmp,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for i in range(2)]
    serve = [FEDVL, "serve", *args, "--host", "127.0.0.1", "--port", str(port), "--insecure", "--executor", executor]
    try:
        return _timed(serve + [f"run.name={name}"], tmp), _timed(serve + [f"run.name={name}-next"], tmp)
    finally:
        for p in nodes:
            stop(p, grace=5)


def _import_seconds() -> float:
    """A fresh interpreter importing the Flower runtime (what every per-message ClientApp process pays)."""
    return _timed([sys.executable, "-c", "import fedvl.transport.flower"], Path.cwd())


def _history(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def measure(model: str, overrides: list[str], executors: list[str], tmp: Path) -> dict:
    args = COMMON + MODELS[model] + [f"run.output_dir={tmp / 'results'}", f"run.cache_dir={tmp / 'cache'}"] \
        + overrides
    _timed([FEDVL, "run", *args, f"run.name={model}-warmup", "--quiet"], tmp)  # fills the feature cache
    names = {"simulator": f"{model}-sim", "flower-sim": f"{model}-fsim"}
    walls = {"simulator": _timed([FEDVL, "run", *args, f"run.name={names['simulator']}", "--quiet"], tmp),
             "flower-sim": _timed([FEDVL, "run", *args, f"run.name={names['flower-sim']}", "run.runtime=flower-sim",
                                   "--quiet"], tmp)}
    for ex in executors:
        names[f"deployment-{ex}"] = f"{model}-deploy-{ex}"
        names[f"deployment-{ex}-next"] = f"{model}-deploy-{ex}-next"
        walls[f"deployment-{ex}"], walls[f"deployment-{ex}-next"] = _deployment(args, tmp, names[f"deployment-{ex}"],
                                                                                 ex)
    hist = {k: _history(tmp / "results" / n) for k, n in names.items()}
    sim = hist["simulator"]
    max_dev = {k: max(abs(a["eval"][c][m] - b["eval"][c][m]) for a, b in zip(sim, h, strict=True)
                      for c in a["eval"] for m in a["eval"][c]) for k, h in hist.items() if k != "simulator"}
    overhead = {k: statistics.median((b["time_s"] - a["time_s"]) / 2 for a, b in zip(sim, h))
                for k, h in hist.items() if k.startswith("deployment")}
    ratio = {k: v / walls["simulator"] for k, v in walls.items()}
    return {"overrides": MODELS[model] + overrides, "rounds": len(sim), "clients": 2, "wall_s": walls,
            "ratio_to_simulator": ratio, "round_s": {k: [r["time_s"] for r in h] for k, h in hist.items()},
            "per_message_overhead_s": overhead, "max_metric_deviation": max_dev,
            "metrics_identical": all(v == 0 for v in max_dev.values()),
            "target_ratio": TARGETS.get(model),
            "holds_ratio": ratio.get("deployment-warm", 1e9) <= TARGETS.get(model, 0),
            "holds_ratio_next_run": ratio.get("deployment-warm-next", 1e9) <= TARGETS.get(model, 0),
            "holds_overhead": overhead.get("deployment-warm", 1e9) <= OVERHEAD_TARGET_S}


def main(overrides: list[str], models: list[str] | None = None, executors: list[str] | None = None) -> dict:
    models, executors = models or ["tiny"], executors or ["warm", "flower"]
    result: dict = {"models": {}, "overhead_target_s": OVERHEAD_TARGET_S}
    with tempfile.TemporaryDirectory() as d:
        for model in models:
            result["models"][model] = measure(model, overrides, executors, Path(d))
    result["import_flower_runtime_s"] = _import_seconds()
    first = result["models"][models[0]]  # the keys benchmarks/run.py reads
    result.update({k: first[k] for k in ("wall_s", "ratio_to_simulator")})
    result["flower_sim_metrics_identical"] = first["max_metric_deviation"]["flower-sim"] == 0
    result["clientapp_processes"] = {"flower": 2 * (2 * first["rounds"] + 1), "warm": 0}
    result["serverapp_processes"] = {"flower": 1, "warm": 0}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print("| experiment | runtime | wall s | ratio to in-process | per-message overhead s | max metric diff |")
    print("|---|---|---|---|---|---|")
    for model, r in result["models"].items():
        for k, v in r["wall_s"].items():
            o = r["per_message_overhead_s"].get(k)
            print(f"| {model} | {k} | {v:.1f} | {r['ratio_to_simulator'][k]:.2f}x | "
                  f"{'' if o is None else f'{o:.2f}'} | {r['max_metric_deviation'].get(k, 0):.2g} |")
    print(f"a fresh process importing the Flower runtime: {result['import_flower_runtime_s']:.1f} s")
    print(f"written: {OUT}")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,default", help="experiments, comma-separated (tiny, default)")
    p.add_argument("--executors", default="warm,flower", help="deployments: warm (fedvl's executor), flower")
    ns, rest = p.parse_known_args()
    main(rest, ns.models.split(","), ns.executors.split(","))
