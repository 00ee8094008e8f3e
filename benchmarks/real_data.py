"""Peak memory and time of one epoch over a large real-format dataset, with and without the feature cache.

Writes a VQAv2-format folder (``folder`` source, docs/datasets.md) of
``--questions`` questions about synthetic-world scenes (``--per-image``
questions per JPEG image of ``--source-px`` pixels, 10 identical human answers
each), then runs, each in a fresh process so peak memory is its own:

* ``no_cache``   - features computed in the run, held in memory (``run.cache_dir=""``);
* ``cache_cold`` - features computed and written to an empty cache, then memory-mapped;
* ``cache_warm`` - the same cache again: no image is decoded.

For each: setup seconds (read the files, build the vocabulary, encode
questions and features), seconds for one local epoch of FedAvg-adapter on the
one client, the process's peak resident memory (``ru_maxrss``) and, after the
epoch, its anonymous vs file-backed resident memory (``/proc/self/status``). The
decoded images of the whole client (what lazy loading never holds) are
reported for scale.

    .venv/bin/python benchmarks/real_data.py [--questions 20000] [key=value ...]
    .venv/bin/python benchmarks/real_data.py --questions 200 model.name=tiny   # smoke

Writes ``benchmarks/results/real_data.json`` (or ``$FEDVL_BENCH_OUT``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

OUT = Path(os.environ.get("FEDVL_BENCH_OUT", Path(__file__).resolve().parent / "results" / "real_data.json"))
MODES = ("no_cache", "cache_cold", "cache_warm")


def write_folder(root: Path, questions: int, per_image: int, source_px: int, seed: int = 0) -> dict:
    """A ``folder``-format dataset: train_/val_questions.json, train_/val_annotations.json, images/."""
    import numpy as np
    from PIL import Image

    from fedvl.data.world import FUNCTIONS, make_split

    (root / "images").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n_q in (("train", questions), ("val", max(per_image, questions // 20))):
        qs, anns = [], []
        n_images = -(-n_q // per_image)
        for start in range(0, n_images, 500):  # render in chunks: never the whole set in memory
            part = make_split("photo", min(500, n_images - start), per_image, 96, FUNCTIONS,
                              seed=zlib.crc32(f"{seed}/{split}/{start}".encode()))
            for i, img in enumerate(part.images):
                name = f"{split}{start + i:07d}.jpg"
                Image.fromarray(np.asarray(img)).resize((source_px, source_px), Image.BILINEAR).save(
                    root / "images" / name, quality=90)
            for s in part.samples:
                if len(qs) == n_q:
                    break
                qid = len(qs)
                qs.append({"image_id": f"{split}{start + s.image:07d}", "question": s.question, "question_id": qid})
                anns.append({"question_id": qid, "multiple_choice_answer": s.answer,
                             "answers": [{"answer": s.answer, "answer_id": k + 1} for k in range(10)]})
        (root / f"{split}_questions.json").write_text(json.dumps({"data_subtype": split, "questions": qs}))
        (root / f"{split}_annotations.json").write_text(json.dumps({"annotations": anns}))
        counts[split] = {"questions": len(qs), "images": n_images}
    return counts


def worker(mode: str, data_root: Path, cache: Path, overrides: list[str]) -> dict:
    """One measurement in this process: build the federation, train one epoch on the client."""
    t0 = time.perf_counter()
    import torch
    import transformers.models.bert.modeling_bert  # noqa: F401  (imports are not the data path: time them apart)

    import fedvl  # noqa: F401
    from fedvl.algorithms.base import ClientContext
    from fedvl.config import load_config
    from fedvl.transport.inprocess import build_federation

    imports = time.perf_counter() - t0

    cache_dir = "" if mode == "no_cache" else str(cache)
    cfg = load_config(None, ["data.benchmark=real", f"data.root={data_root.parent}",
                             f"data.clients=folder:{data_root.name}", f"run.cache_dir={cache_dir}",
                             "algorithm.name=fedavg", "model.peft=adapter", "algorithm.local_epochs=1"] + overrides)
    t0 = time.perf_counter()
    fed = build_federation(cfg, status=lambda s: None)
    setup = time.perf_counter() - t0
    cid = next(iter(fed.train))
    data = fed.train[cid]
    ctx = ClientContext(cid, fed.model, data, cfg, 1, {}, fed.travel, fed.trainable, torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    res = fed.client.fit(ctx)
    epoch = time.perf_counter() - t0
    feats = data.features
    # ru_maxrss counts memory-mapped cache pages that were read too; those are page cache the kernel can
    # drop, so the process's own (anonymous) memory after the epoch is reported beside it.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kb = lambda key: int(status[key].split()[0]) / 1024 if key in status else float("nan")  # noqa: E731
    return {"mode": mode, "import_s": imports, "setup_s": setup, "epoch_s": epoch, "steps": res.metrics["steps"],
            "train_questions": len(data), "train_images": int(feats.shape[0]),
            "feature_mb": feats.numel() * feats.element_size() / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_anon_mb_after_epoch": kb("RssAnon"), "rss_file_mb_after_epoch": kb("RssFile")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=20000)
    ap.add_argument("--per-image", type=int, default=2)
    ap.add_argument("--source-px", type=int, default=256, help="side of the JPEG files on disk")
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides (default: model.name=tiny)")
    args = ap.parse_args(argv)
    overrides = args.overrides or ["model.name=tiny"]
    if args.worker:
        print(json.dumps(worker(args.worker, args.root, args.cache, overrides)))
        return {}
    with tempfile.TemporaryDirectory(prefix="fedvl-real-bench-") as tmp:
        root = Path(tmp) / "data" / "bench"
        t0 = time.perf_counter()
        counts = write_folder(root, args.questions, args.per_image, args.source_px)
        write_s = time.perf_counter() - t0
        disk_mb = sum(f.stat().st_size for f in (root / "images").iterdir()) / 2**20
        runs = []
        for mode in MODES:
            cmd = [sys.executable, __file__, "--worker", mode, "--root", str(root), "--cache", str(Path(tmp) / "cache"),
                   *overrides]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{mode:<11} setup {runs[-1]['setup_s']:7.1f}s  epoch {runs[-1]['epoch_s']:7.1f}s  "
                  f"peak RSS {runs[-1]['peak_rss_mb']:7.0f} MB  anon {runs[-1]['rss_anon_mb_after_epoch']:6.0f} MB  "
                  f"file-backed {runs[-1]['rss_file_mb_after_epoch']:6.0f} MB", flush=True)
    size = next((int(o.split("=")[1]) for o in overrides if o.startswith("data.image_size=")), 96)
    result = {"questions": counts, "per_image": args.per_image, "source_px": args.source_px,
              "jpeg_on_disk_mb": disk_mb, "write_fixture_s": write_s, "overrides": overrides,
              "decoded_train_images_mb": counts["train"]["images"] * size * size * 3 / 2**20,
              "decoded_train_images_at_source_px_mb": counts["train"]["images"] * args.source_px ** 2 * 3 / 2**20,
              "runs": runs}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")
    return result


if __name__ == "__main__":
    main()
