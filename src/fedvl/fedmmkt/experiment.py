"""What a FedMMKT-family run adds to its results folder (:func:`report`, the knowledge family's
:meth:`fedvl.rounds.family.Family.report`).

The folder has what every fedvl run writes (``config.yaml``, ``metrics.jsonl`` with one
line per round, ``summary.md`` / ``summary.json``, ``accuracy.png``, ``status.json``) plus,
when a generator is used, ``fidelity.png`` (judge accuracy and feature distance per round)
and ``samples-first.png`` / ``samples-last.png``: a grid of generated images, one row per
prompt, at the first and the last round, so a person can see the generator adapt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedvl.report.history import write_json_atomic
from fedvl.rounds.family import Finished


def save_grid(images: torch.Tensor, labels: torch.Tensor, classes: list[str], path: Path, scale: int = 3) -> None:
    """One row per class (its prompt written at the left), its samples side by side."""
    import numpy as np
    from PIL import Image, ImageDraw

    rows = [images[labels == k] for k in range(len(classes))]
    n = max(len(r) for r in rows)
    s = images.shape[-1] * scale
    label_w = 110
    canvas = Image.new("RGB", (label_w + n * (s + 2), len(classes) * (s + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, row) in enumerate(zip(classes, rows)):
        draw.text((4, i * (s + 2) + s // 2 - 6), name, fill="black")
        for j, img in enumerate(row):
            arr = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            tile = Image.fromarray(np.ascontiguousarray(arr)).resize((s, s), Image.NEAREST)
            canvas.paste(tile, (label_w + j * (s + 2), i * (s + 2)))
    canvas.save(path)


def plot_fidelity(rounds: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["round"], r["generator"]) for r in rounds if "generator" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    a.plot([p[0] for p in pts], [100 * p[1]["judge_acc"] for p in pts], marker="o")
    a.set(xlabel="round", ylabel="judge accuracy on generated (%)", title="generator fidelity")
    b.plot([p[0] for p in pts], [p[1]["feature_distance"] for p in pts], marker="o", color="tab:red")
    b.set(xlabel="round", ylabel="feature distance to real (lower is better)", title="distribution gap")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(run: Finished) -> tuple[str, list[str], dict[str, Any]]:
    """(title, notes, summary) of a finished knowledge-transfer run, with its plots and
    ``pretrain.json`` written into the run's folder (:meth:`fedvl.rounds.family.Family.report`)."""
    from fedvl.fedmmkt.federation import task_model
    from fedvl.report.plots import plot_accuracy

    cfg, fed, history, record, run_dir = run.cfg, run.fed, run.history, run.final, run.run_dir
    state = run.server.state
    title = f"{cfg.algorithm.name} · {cfg.fedmmkt.archs} · {len(fed.classes)} classes"
    plot_accuracy(history.rounds, run_dir / "accuracy.png", title)
    if fed.judge is not None:
        plot_fidelity(history.rounds, run_dir / "fidelity.png", title)
        labels = torch.arange(len(fed.classes)).repeat(cfg.fedmmkt.eval_per_class)
        save_grid(state.samples["first"], labels, fed.classes, run_dir / "samples-first.png")
        save_grid(state.samples["last"], labels, fed.classes, run_dir / "samples-last.png")
    n_syn = len(state.synthetic) if state.synthetic is not None else 0
    sizes = {cid: sum(p.numel() for p in task_model(fed, cid).parameters()) for cid in fed.client_ids}
    mean_size = round(sum(sizes.values()) / len(sizes))  # clients differ: the mean over clients
    if fed.server.average_weights:
        travel = mean_size
    elif fed.server.pool_data:  # kt-centralized: the raw private images move (an upper reference only)
        # (its data are all built in the server's process: fedmmkt/validate.py keeps it off a deployment)
        travel = round(sum(fed.train[c].images.numel() for c in fed.client_ids) / len(fed.client_ids))
    elif fed.server.synthetic:
        travel = n_syn * len(fed.classes) + len(fed.classes) * (cfg.fedmmkt.proto_dim + 1)
    else:
        travel = 0
    params = {"total_params": mean_size, "trainable_params": mean_size, "travel_params": travel,
              "trainable_frac": 1.0, "travel_frac": travel / mean_size,
              "bytes_up_per_client_round": 4 * travel, "client_params": sizes, "setup_s": run.setup_s}
    notes = ["clients: " + ", ".join(f"{cid} ({sizes[cid]:,} params)" for cid in fed.client_ids),
             f"sent up per client per round: {travel:,} floats ({4 * travel / 1e6:.3f} MB)"
             + (" - logits and prototypes on the synthetic set only" if fed.server.synthetic else "")]
    if fed.pretrain_meta.get("source_fidelity"):
        sf = fed.pretrain_meta["source_fidelity"]
        notes.append(f"pretrained generator: source-domain judge accuracy {100 * sf['judge_acc']:.1f}%")
    if "generator" in record:
        first = history.rounds[0]["generator"]
        notes.append(f"generator on the client domains: judge accuracy {100 * first['judge_acc']:.1f}% -> "
                     f"{100 * record['generator']['judge_acc']:.1f}%, feature distance "
                     f"{first['feature_distance']:.2f} -> {record['generator']['feature_distance']:.2f}")
    write_json_atomic(run_dir / "pretrain.json", {k: v for k, v in fed.pretrain_meta.items() if k != "loss"})
    rejected = sum(len(r.get("rejected", {})) for r in history.rounds)
    notes.append(f"rejected client reports: {rejected} over {len(history.rounds)} rounds")
    notes.append(f"wall time {run.wall_s:.1f}s (setup {run.setup_s:.1f}s); seed {cfg.run.seed}")
    summary = {"final": record, "params": params, "wall_s": run.wall_s, "setup_s": run.setup_s,
               "algorithm": cfg.algorithm.name, "benchmark": "fedmmkt", "generator": record.get("generator"),
               "rejected_updates": rejected}
    return f"{cfg.algorithm.name} · knowledge transfer · {len(cfg.fedmmkt.domains)} clients", notes, summary
