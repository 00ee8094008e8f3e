"""The device check (issue 18): what a GPU gives fedvl, and that it computes what the CPU does.

On a machine with CUDA it measures, on ``cuda``:

1. training samples/s (and peak GPU memory) of the default model and of a ViLT-B-sized,
   randomly initialised ViLT (hidden 768, 12 layers, 384 px, 145 visual tokens), each under
   FedAvg-adapter and FedDAT, in fp32 and bf16: ``train_local`` with the algorithm's own step
   on random batches, ``--warmup`` steps, then ``--steps`` timed steps;
2. one FedMMKT round of ``configs/fedmmkt.yaml`` (generation, client training, generator update,
   evaluation), with its phases' times;
3. CPU-vs-GPU agreement: one round of a tiny FedAvg and a tiny FedDAT run on each device from
   the same seed; the mean training loss must agree within ``LOSS_RTOL`` (relative) and the
   average accuracy within ``ACC_ATOL`` (absolute: a question or two flipping);
4. the generative rows (``model.name=hf-vlm``, :mod:`vlm_throughput`): for the real-size shapes of
   ``configs/vlm/`` (Qwen2-VL-2B, SmolVLM-256M; random weights) LoRA training tokens/s, model FLOP
   utilisation and peak memory in bf16, with and without gradient checkpointing and on a 4-bit NF4
   base, and one FedAvg-LoRA and one FedDAT round through fedvl.

Without CUDA (or with ``--cpu``) it runs the reduced CPU path: the tiny model's samples/s
in fp32 and bf16, a tiny FedMMKT round, and tokens/s and a FedAvg-LoRA and a FedDAT round of each
tiny generative family of ``tests/vlm_fixtures.py``; it says it saw no GPU; agreement is skipped.

    python benchmarks/device.py                     # everything (not yet timed on a GPU)
    python benchmarks/device.py --skip-generative   # 1-3 (about 3-5 min on one H200)
    python benchmarks/device.py --generative-only   # 4 alone, into the same JSON (its other sections kept)
    python benchmarks/device.py --cpu               # the reduced CPU path (under a minute on 2 cores)

Writes ``benchmarks/results/device.json`` (or ``$FEDVL_BENCH_OUT``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import fedvl  # noqa: F401  (thread wait policy before torch does any work)
from fedvl.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vlm_throughput  # noqa: E402  (beside this file; benchmarks/ is not a package)
from vlm_throughput import sync  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("FEDVL_BENCH_OUT", ROOT / "benchmarks" / "results" / "device.json"))
LOSS_RTOL, ACC_ATOL = 1e-2, 0.05
TINY = ["model.name=tiny", "data.train_images=12", "data.test_images=8", "data.image_size=64",
        "algorithm.batch_size=8", "algorithm.lr=0.005", "algorithm.rounds=1"]
KT_TINY = ["t2i.text=tiny", "t2i.channels=8,16", "t2i.image_size=16", "t2i.pretrain_steps=3",
           "t2i.pretrain_per_class=2", "t2i.sample_steps=2", "t2i.server_steps=2", "t2i.server_batch=8",
           "fedmmkt.colors=red,blue", "fedmmkt.shapes=circle,square", "fedmmkt.domains=night,sketch,night",
           "fedmmkt.archs=cnn,mlp,cnn", "fedmmkt.train_per_class=2", "fedmmkt.test_per_class=2",
           "fedmmkt.judge_per_class=3", "fedmmkt.synthetic_per_class=2", "fedmmkt.eval_per_class=2"]


def vilt_b_checkpoint(root: Path) -> Path:
    """A randomly initialised ViLT-B/32 (transformers' ViltConfig defaults) saved like a hub checkpoint."""
    from transformers import ViltConfig, ViltModel

    from fedvl.models.backbones import load_tokenizer

    path = root / "vilt-b-random"
    torch.manual_seed(0)
    ViltModel(ViltConfig(), add_pooling_layer=False).save_pretrained(path)
    load_tokenizer().save_pretrained(path)  # MiniLM's WordPiece: the same 30522-token vocabulary as ViLT's
    return path


def throughput(overrides: list[str], algo: str, precision: str, device: torch.device, steps: int,
               warmup: int, batch: int) -> dict:
    """Samples/s of one client's training loop with ``algo``'s own step on random batches."""
    from fedvl.algorithms import get_algorithm
    from fedvl.algorithms.base import ClientContext
    from fedvl.data.features import EncodedSplit, image_features
    from fedvl.engine.device import Amp
    from fedvl.engine.loops import train_local
    from fedvl.models.backbones import build_model
    from fedvl.models.params import get_params, set_trainable, trainable_names

    cfg = load_config(None, [f"algorithm.name={algo}", "model.peft=adapter", f"algorithm.batch_size={batch}",
                             f"run.device={device}", f"run.precision={precision}"] + overrides)
    a = get_algorithm(algo)
    model = build_model(cfg.model, 32, cfg.data.image_size, 0, roles=a.adapter_roles).to(device)
    trainable = trainable_names(model, "adapter", a.trainable_roles)
    set_trainable(model, trainable)
    travel = [n for n in trainable if ".adapters.shared." in n]
    g = torch.Generator().manual_seed(0)
    n_img, n = 64, batch * (steps + warmup)
    images = torch.randint(0, 256, (n_img, cfg.data.image_size, cfg.data.image_size, 3), dtype=torch.uint8,
                           generator=g).numpy()
    t0 = time.perf_counter()
    feats = image_features(model, images, cache_dir=None)
    sync(device)
    feature_s = time.perf_counter() - t0
    L = cfg.model.max_text_len
    split = EncodedSplit(torch.randint(1000, 20000, (n, L), generator=g), torch.ones(n, L, dtype=torch.long),
                         torch.arange(n) % n_img, torch.randint(0, 32, (n,), generator=g), feats)
    amp = Amp(device, precision)
    ctx = ClientContext("bench", model, split, cfg, 1, get_params(model, travel), travel, trainable, g, amp=amp)
    client = a.client(cfg)
    step = client.make_step(ctx, client.optimizer(ctx))
    run = lambda k: train_local(model, split, step, batch_size=batch, epochs=1, max_steps=k,  # noqa: E731
                                generator=g, lr_at=lambda f: cfg.algorithm.lr, amp=amp)
    if warmup:  # (max_steps=0 would mean a whole epoch)
        run(warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    res = run(steps)
    sync(device)
    dt = time.perf_counter() - t0
    out = {"samples_per_s": steps * batch / dt, "step_s": dt / steps, "loss": res.loss, "batch": batch,
           "steps": steps, "feature_images_per_s": n_img / feature_s,
           "params_total": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    del model, ctx, step
    return out


def fedmmkt_round(config: Path | None, overrides: list[str], device: torch.device, work: Path) -> dict:
    from fedvl.fedmmkt.exchange import run_round
    from fedvl.fedmmkt.federation import ServerState, build

    cfg = load_config(config, ["algorithm.name=fedmmkt", f"run.device={device}", f"run.cache_dir={work / 'cache'}",
                             "algorithm.rounds=1"] + overrides)
    t0 = time.perf_counter()
    fed = build(cfg, work / f"kt-{device.type}", status=lambda s: None)
    build_s = time.perf_counter() - t0
    sync(device)
    t0 = time.perf_counter()
    rec = run_round(fed, 1, ServerState())
    sync(device)
    return {"round_s": time.perf_counter() - t0, "build_s": build_s, "timing": rec["timing"],
            "avg_acc": rec["avg"]["acc"], "generator": rec.get("generator")}


def agreement(work: Path) -> dict:
    """One tiny round per algorithm on the CPU and on the GPU, same seed, separate feature caches."""
    from fedvl.experiment import run_experiment

    out = {}
    for algo in ("fedavg", "feddat"):
        finals = {}
        for dev in ("cpu", "cuda"):
            cfg = load_config(None, TINY + [f"algorithm.name={algo}", f"run.device={dev}",
                                            f"run.output_dir={work / 'runs'}", f"run.name={algo}-{dev}",
                                            f"run.cache_dir={work / ('cache-' + dev)}"])
            finals[dev] = run_experiment(cfg, work / "runs" / f"{algo}-{dev}", progress_enabled=False)["final"]
        c, g = finals["cpu"], finals["cuda"]
        loss_rel = abs(g["train_loss"] - c["train_loss"]) / abs(c["train_loss"])
        acc_abs = abs(g["avg"]["acc"] - c["avg"]["acc"])
        out[algo] = {"cpu": {"train_loss": c["train_loss"], "acc": c["avg"]["acc"]},
                     "cuda": {"train_loss": g["train_loss"], "acc": g["avg"]["acc"]},
                     "loss_rel_diff": loss_rel, "acc_abs_diff": acc_abs,
                     "agree": loss_rel <= LOSS_RTOL and acc_abs <= ACC_ATOL}
    return out


def classifier_rows(result: dict, device: torch.device, gpu: bool, steps: int, warmup: int, batch: int,
                    work: Path) -> None:
    """Sections 1-3 (the classifier models, FedMMKT, CPU-vs-GPU agreement), into ``result``."""
    models = {"tiny": TINY[:1] + ["data.image_size=64"]} if not gpu else {
        "default": [],
        "vilt-b-random": ["model.name=vilt", f"model.checkpoint={vilt_b_checkpoint(work)}",
                          "data.image_size=384"]}
    result["throughput"] = {}
    for name, over in models.items():
        for algo in ("fedavg", "feddat"):
            for prec in ("fp32", "bf16"):
                key = f"{name}/{algo}-adapter/{prec}".replace("feddat-adapter", "feddat")
                r = throughput(over, algo, prec, device, steps, warmup, batch)
                result["throughput"][key] = r
                print(f"{key:38s} {r['samples_per_s']:9.1f} samples/s  ({1000 * r['step_s']:.1f} ms/step"
                      + (f", peak {r['peak_gpu_gb']:.2f} GB)" if "peak_gpu_gb" in r else ")"))
                if gpu:
                    torch.cuda.empty_cache()
    if gpu:  # the shipped FedMMKT experiment (its pretrained generator ships with fedvl); the fidelity
        # judge trains on the CPU during setup (about 100 s on 1 thread here): give it the cores
        threads = f"run.threads={min(8, os.cpu_count() or 1)}"
        result["fedmmkt_round"] = fedmmkt_round(ROOT / "configs" / "fedmmkt.yaml", [threads], device, work)
    else:
        result["fedmmkt_round"] = fedmmkt_round(None, KT_TINY + ["run.threads=1"], device, work)
    print(f"one FedMMKT round on {device}: {result['fedmmkt_round']['round_s']:.1f} s "
          f"({', '.join(f'{k} {v:.1f}' for k, v in result['fedmmkt_round']['timing'].items())})")
    if gpu:
        result["agreement"] = agreement(work)
        for algo, a in result["agreement"].items():
            print(f"CPU vs GPU, tiny {algo} round: loss {a['cpu']['train_loss']:.5f} vs "
                  f"{a['cuda']['train_loss']:.5f} (rel {a['loss_rel_diff']:.1e}), acc {a['cpu']['acc']:.4f} vs "
                  f"{a['cuda']['acc']:.4f} -> {'agree' if a['agree'] else 'DISAGREE'}")
    else:
        result["agreement"] = {"skipped": "no CUDA device"}


def machine() -> dict:
    info = {"torch": torch.__version__, "cpus": os.cpu_count(), "platform": platform.platform(),
            "cuda": torch.version.cuda, "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 1e9
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="the reduced CPU path even where a GPU exists")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per measurement (GPU 30, generative rows 10; CPU 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (GPU 5, generative rows 3; CPU 1)")
    ap.add_argument("--batch", type=int, default=32)
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--skip-generative", action="store_true", help="without the generative (hf-vlm) rows")
    only.add_argument("--generative-only", action="store_true",
                      help="only the generative rows, written into the JSON's 'generative' section")
    ap.add_argument("--vlm-batch", type=int, default=None, help="generative rows: sequences per step (GPU 8, CPU 4)")
    ap.add_argument("--vlm-seq", type=int, default=None, help="generative rows: positions per sequence, image "
                                                               "tokens included (GPU 512, CPU 64)")
    ap.add_argument("--vlm-families", default=None,
                    help="CPU path: the tiny families to time, comma-separated (default: all five)")
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if gpu else "cpu")
    steps, warmup = args.steps or (30 if gpu else 3), args.warmup if args.warmup is not None else (5 if gpu else 1)
    if not gpu:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        print("no CUDA device" + (" used (--cpu)" if torch.cuda.is_available() else " on this machine")
              + ": running the reduced CPU path (tiny model, tiny FedMMKT round, tiny generative families; "
                "no CPU-vs-GPU agreement)")
    result: dict = {"machine": machine(), "device": str(device), "path": "gpu" if gpu else "cpu-reduced",
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "tolerance": {"loss_rtol": LOSS_RTOL,
                                                                                  "acc_atol": ACC_ATOL}}
    t_start = time.perf_counter()
    if args.generative_only:  # the other sections of an earlier run on this machine stay in the JSON
        earlier = json.loads(OUT.read_text()) if OUT.is_file() else {}
        if earlier.get("machine") == result["machine"] and earlier.get("device") == str(device):
            result = earlier
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.generative_only:
            classifier_rows(result, device, gpu, steps, warmup, args.batch, work)
        if not args.skip_generative:
            t0 = time.perf_counter()
            families = tuple(args.vlm_families.split(",")) if args.vlm_families else None
            gen = vlm_throughput.run(device, work, steps=args.steps, warmup=args.warmup, families=families,
                                     batch=args.vlm_batch, seq_len=args.vlm_seq)
            gen["wall_s"] = time.perf_counter() - t0
            result["generative"] = gen
            print("generative (hf-vlm, LoRA rank 16 on q/k/v/o):")
            print("\n".join("  " + line for line in vlm_throughput.summary_rows(gen)))
    wall = time.perf_counter() - t_start
    if not args.generative_only:  # (a generative-only run's time is its section's wall_s)
        result["wall_s"] = wall
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2, default=float))
    print(f"{wall:.0f} s; written: {OUT}")
    return result


if __name__ == "__main__":
    main()
