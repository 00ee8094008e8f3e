"""The same small experiment under the in-process simulator, Flower's simulation and
a localhost Flower deployment (SuperLink + one SuperNode per client as separate
processes), run back to back; wall times as ratios to the in-process run, and
where the extra time goes.

    .venv/bin/python benchmarks/flower_overhead.py [key=value ...]

Default experiment: tiny model, 2 clients, 3 rounds, FedAvg. Writes
``benchmarks/results/flower_overhead.json`` (or ``$FEDVL_BENCH_OUT``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(os.environ.get("FEDVL_BENCH_OUT", Path(__file__).resolve().parent / "results" / "flower_overhead.json"))
FEDVL = str(Path(sys.executable).parent / "fedvl")
DEFAULTS = ["model.name=tiny", "data.num_clients=2", "data.domains=photo,sketch", "data.train_images=16",
            "data.test_images=8", "data.image_size=64", "algorithm.rounds=3", "algorithm.batch_size=8",
            "run.threads=1"]


def _timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {r.stderr[-800:] or r.stdout[-800:]}")
    return time.perf_counter() - t0


def _deployment(args: list[str], tmp: Path) -> float:
    from fedvl.deploy.process import free_port, stop

    port = free_port()
    nodes = [subprocess.Popen([FEDVL, "join", "--server", f"127.0.0.1:{port}", "--partition", str(i), "--insecure",
                               "--state-dir", str(tmp / f"node{i}")], cwd=tmp, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True) for i in range(2)]
    try:
        return _timed([FEDVL, "serve", *args, "run.name=deploy", "--host", "127.0.0.1", "--port", str(port),
                       "--insecure"], tmp)
    finally:
        for p in nodes:
            stop(p, grace=5)


def _import_seconds() -> float:
    """A fresh interpreter importing the Flower runtime (what every ClientApp process pays)."""
    return _timed([sys.executable, "-c", "import fedvl.transport.flower"], Path.cwd())


def main(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        args = DEFAULTS + [f"run.output_dir={tmp / 'results'}", f"run.cache_dir={tmp / 'cache'}"] + overrides
        _timed([FEDVL, "run", *args, "run.name=warm", "--quiet"], tmp)  # fills the feature cache
        walls = {
            "simulator": _timed([FEDVL, "run", *args, "run.name=sim", "--quiet"], tmp),
            "flower-sim": _timed([FEDVL, "run", *args, "run.name=fsim", "run.runtime=flower-sim", "--quiet"], tmp),
            "deployment": _deployment(args, tmp),
        }
        hist = {k: [json.loads(x) for x in (tmp / "results" / n / "metrics.jsonl").read_text().splitlines()]
                for k, n in (("simulator", "sim"), ("flower-sim", "fsim"), ("deployment", "deploy"))}
        rounds = len(hist["simulator"])
        same = all(a["eval"] == b["eval"] for a, b in zip(hist["simulator"], hist["flower-sim"]))
        max_dev = max(abs(a["eval"][c]["acc"] - b["eval"][c]["acc"])
                      for a, b in zip(hist["simulator"], hist["deployment"]) for c in a["eval"])
        imp = _import_seconds()
    clients = 2
    result = {
        "overrides": overrides, "rounds": rounds, "clients": clients, "wall_s": walls,
        "ratio_to_simulator": {k: v / walls["simulator"] for k, v in walls.items()},
        "flower_sim_metrics_identical": same, "deployment_max_acc_deviation": max_dev,
        "import_flower_runtime_s": imp,
        # Flower's SuperNode starts one ClientApp process per message: per round one train and
        # one evaluate message per client, plus one query per client at the start
        "clientapp_processes": clients * (2 * rounds + 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print("| runtime | wall s | ratio to in-process |")
    print("|---|---|---|")
    for k, v in walls.items():
        print(f"| {k} | {v:.1f} | {v / walls['simulator']:.2f}x |")
    print(f"flower-sim metrics identical to the simulator: {same}; deployment max |acc diff| {max_dev:.2g}")
    print(f"a fresh process importing the Flower runtime: {imp:.1f} s; the deployment started "
          f"{result['clientapp_processes']} ClientApp processes")
    print(f"written: {OUT}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
