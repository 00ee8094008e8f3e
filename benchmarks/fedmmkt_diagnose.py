"""Why FedMMKT's clients fall below local-only: the client side, measured on one fixed synthetic set.

    PYTHONPATH=src .venv/bin/python benchmarks/fedmmkt_diagnose.py --seed 0 --out results/diag-s0.json

Builds the ``kt-distill`` federation of ``configs/fedmmkt.yaml`` once (the pretrained generator's synthetic set
is generated once and reused, which is what makes this cheap), then runs every client-side variant below for
the config's rounds from the same initial task models and the same set, and measures per round:

- each client's test accuracy (and the largest share of one predicted class: a collapse shows as ~1);
- how often a synthetic sample shows its prompt's class: the fidelity judge (trained on held-out real images of
  the client domains) and each client's own model on the synthetic set;
- per client, how far its features of synthetic and private images of the same class lie apart, against how far
  its private class means lie from each other (ratio > 1: a synthetic "red circle" is farther from the private
  red circles than another private class is);
- batch norm: the first BN layer's channel means of a synthetic and a private batch, in units of the client's
  running standard deviation (how foreign the synthetic batch looks to the statistics used at test time);
- the synthetic share of each step (samples) and the size of the synthetic loss against the total.

Variants are config overrides of the ``fedmmkt`` section (each lever is a switch). Writes JSON.

    python benchmarks/fedmmkt_diagnose.py --summarize results/diag/*.json

prints one markdown table: final-round client average (last three rounds' mean; per client) per file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedvl.fedmmkt.algorithms import KTClient
from fedvl.config import load_config
from fedvl.fedmmkt.generator.judge import judge_outputs
from fedvl.fedmmkt.task_models import build_task_model
from fedvl.fedmmkt.exchange import run_round
from fedvl.fedmmkt.federation import ServerState, build, task_model
from fedvl.seeding import derived_seed

VARIANTS: dict[str, list[str]] = {
    "local (no synthetic, no proto pull)": ["fedmmkt.kd_weight=0", "fedmmkt.proto_weight=0"],
    "no-synthetic (proto pull only)": ["fedmmkt.kd_weight=0"],
    "kd, bn eval (shipped)": [],
    "kd, bn train": ["fedmmkt.synthetic_bn=train"],
    "kd, bn batch": ["fedmmkt.synthetic_bn=batch"],
    "prompt, bn eval": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1"],
    "prompt, bn batch": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch"],
    "prompt+kd, bn batch": ["fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch"],
    "prompt, bn batch, ramp 3": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch",
                                 "fedmmkt.synthetic_ramp=3"],
    "prompt, bn batch, curriculum": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch",
                                     "fedmmkt.curriculum=true"],
    "prompt, bn batch, no proto pull": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch",
                                        "fedmmkt.proto_weight=0"],
    "prompt+kd, bn batch, no proto pull": ["fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch",
                                           "fedmmkt.proto_weight=0"],
    "kd, bn eval, no proto pull": ["fedmmkt.proto_weight=0"],
    "P = prompt, bn batch, no proto pull": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1",
                                            "fedmmkt.synthetic_bn=batch", "fedmmkt.proto_weight=0"],
    "P + curriculum": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch",
                       "fedmmkt.proto_weight=0", "fedmmkt.curriculum=true"],
    "P + kd": ["fedmmkt.kd_weight=1", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch", "fedmmkt.proto_weight=0"],
    "P + syn batch 64": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch",
                         "fedmmkt.proto_weight=0", "fedmmkt.synthetic_batch=64"],
    "P + proto pull 0.1": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch",
                           "fedmmkt.proto_weight=0.1"],
    "P + restyle": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch",
                    "fedmmkt.proto_weight=0", "fedmmkt.synthetic_restyle=true"],
    "P + end 0.2": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch",
                    "fedmmkt.proto_weight=0", "fedmmkt.synthetic_end=0.2"],
    "P + restyle + curriculum": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch",
                                 "fedmmkt.proto_weight=0", "fedmmkt.synthetic_restyle=true", "fedmmkt.curriculum=true"],
    "P + restyle + kd": ["fedmmkt.kd_weight=1", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch",
                         "fedmmkt.proto_weight=0", "fedmmkt.synthetic_restyle=true"],
    "R = P + restyle + curriculum, + kd": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch", "fedmmkt.proto_weight=0", "fedmmkt.synthetic_restyle=true", "fedmmkt.curriculum=true", "fedmmkt.kd_weight=1"],
    "R + proto pull 0.1": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch", "fedmmkt.proto_weight=0", "fedmmkt.synthetic_restyle=true", "fedmmkt.curriculum=true", "fedmmkt.proto_weight=0.1"],
    "R + kd + proto pull 0.1": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch", "fedmmkt.proto_weight=0", "fedmmkt.synthetic_restyle=true", "fedmmkt.curriculum=true", "fedmmkt.kd_weight=1", "fedmmkt.proto_weight=0.1"],
    "shipped": ["fedmmkt.kd_weight=1", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch", "fedmmkt.proto_weight=0", "fedmmkt.synthetic_restyle=true"],
    "shipped + end 0.2": ["fedmmkt.kd_weight=1", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch", "fedmmkt.proto_weight=0", "fedmmkt.synthetic_restyle=true", "fedmmkt.synthetic_end=0.2"],
    "shipped + syn batch 8": ["fedmmkt.kd_weight=1", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch", "fedmmkt.proto_weight=0", "fedmmkt.synthetic_restyle=true", "fedmmkt.synthetic_batch=8"],
    "shipped + curriculum": ["fedmmkt.kd_weight=1", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch", "fedmmkt.proto_weight=0", "fedmmkt.synthetic_restyle=true", "fedmmkt.curriculum=true"],
    "prompt, bn batch, syn batch 64": ["fedmmkt.kd_weight=0", "fedmmkt.prompt_weight=1", "fedmmkt.synthetic_bn=batch",
                                       "fedmmkt.synthetic_batch=64"],
}


@torch.no_grad()
def client_probe(fed, cid: str, syn_images: torch.Tensor, syn_labels: torch.Tensor) -> dict[str, float]:
    model = task_model(fed, cid).eval()
    data, test = fed.train[cid], fed.test[cid]
    f_syn, lo_syn = model(syn_images)
    f_priv, _ = model(data.images)
    pred_test = model(test.images)[1].argmax(1)
    classes = len(fed.classes)
    mu_s = torch.stack([f_syn[syn_labels == k].mean(0) for k in range(classes)])
    mu_p = torch.stack([f_priv[data.labels == k].mean(0) for k in range(classes)])
    same = (mu_s - mu_p).norm(dim=1).mean()
    between = torch.cdist(mu_p, mu_p)
    other = between.sum() / (classes * (classes - 1))
    out = {"syn_acc": float((lo_syn.argmax(1) == syn_labels).float().mean()),
           "feat_gap_ratio": float(same / other.clamp_min(1e-8)),
           "top_class_share": float(torch.bincount(pred_test, minlength=classes).max() / len(pred_test))}
    bn = next((m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)), None)
    if bn is not None:  # the first BN layer: its input is the first conv's output
        conv = model.body[0]
        sd = bn.running_var.sqrt().clamp_min(1e-5)
        z = lambda x: float(((conv(x).mean((0, 2, 3)) - bn.running_mean) / sd).abs().mean())
        out["bn_z_synthetic"], out["bn_z_private"], out["bn_z_test"] = z(syn_images), z(data.images), z(test.images)
    return out


def reset(fed, overrides: list[str], base: list[str]) -> None:
    cfg = load_config(fed.cfg_path, base + overrides)
    fed.cfg = cfg
    fed.client = KTClient(cfg.fedmmkt, fed.amp)
    seed = cfg.run.seed
    for cid, arch in fed.archs.items():
        model = build_task_model(arch, len(fed.classes), cfg.t2i.image_size, cfg.fedmmkt.proto_dim,
                                 derived_seed(seed, "task-model", cid))
        fed.store.save(cid, model.state_dict())


def summarize(paths: list[Path]) -> None:
    """Markdown: every variant's final-round and last-three-rounds client average per results file."""
    import statistics as st

    cols: dict[str, dict[str, str]] = {}
    heads = []
    for p in paths:
        d = json.loads(p.read_text())
        head = p.stem
        heads.append(head)
        for name, rs in d["variants"].items():
            last3 = st.mean(r["avg"] for r in rs[-3:])
            per = " / ".join(f"{100 * st.mean(r['acc'][c] for r in rs[-3:]):.0f}" for c in rs[0]["acc"])
            cols.setdefault(name, {})[head] = f"{100 * rs[-1]['avg']:.1f} ({100 * last3:.1f}; {per})"
    print("| variant | " + " | ".join(heads) + " |\n|---" * 1 + "|---" * len(heads) + "|")
    for name, row in cols.items():
        print(f"| {name} | " + " | ".join(row.get(h, "") for h in heads) + " |")


def main() -> None:
    if sys.argv[1:2] == ["--summarize"]:
        summarize([Path(x) for x in sys.argv[2:]])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/fedmmkt.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="", help="names separated by ; (default: all)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("overrides", nargs="*")
    ns = ap.parse_args()
    torch.set_num_threads(1)
    base = ["algorithm.name=kt-distill", "run.threads=1", f"run.seed={ns.seed}", *ns.overrides]
    cfg = load_config(ns.config, base)
    names = [v.strip() for v in ns.variants.split(";") if v.strip()] or list(VARIANTS)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}")
    results: dict = {"seed": ns.seed, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fed = build(cfg, Path(tmp), status=lambda s: print(s, file=sys.stderr))
        fed.cfg_path = ns.config
        state0 = ServerState()
        # the fixed synthetic set of kt-distill, generated once
        from fedvl.fedmmkt.federation import generate
        syn = generate(fed, cfg.fedmmkt.synthetic_per_class, derived_seed(cfg.run.seed, "synthetic", 1))
        state0.synthetic = syn
        _, jpred = judge_outputs(fed.judge, syn.images)
        results["judge_shows_prompt"] = float((jpred == syn.labels).float().mean())
        results["setup_s"] = time.perf_counter() - t0
        fed.judge = None  # the generator is fixed here: its fidelity is measured once, above, not every round
        print(f"setup {results['setup_s']:.0f}s; judge: {100 * results['judge_shows_prompt']:.1f}% of the "
              f"synthetic set shows its prompt's class", file=sys.stderr)
        for name in names:
            reset(fed, VARIANTS[name], base)
            state = ServerState(synthetic=syn)
            rounds = []
            for r in range(1, fed.cfg.algorithm.rounds + 1):
                rec = run_round(fed, r, state)
                probes = {cid: client_probe(fed, cid, syn.images, syn.labels) for cid in fed.client_ids}
                rounds.append({"acc": {c: m["acc"] for c, m in rec["eval"].items()}, "avg": rec["avg"]["acc"],
                               "ensemble_agrees": rec["server"].get("ensemble_agrees"),
                               "accepted_frac": rec["server"].get("accepted_frac"),
                               "train": rec["train"], "probe": probes})
            results["variants"][name] = rounds
            last = rounds[-1]
            print(f"{name:38s} avg {100 * last['avg']:.1f} | " + " ".join(
                f"{100 * v:.1f}" for v in last["acc"].values()) + f" | agree {100 * (last['ensemble_agrees'] or 0):.0f}",
                file=sys.stderr)
            ns.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "variants"}))


if __name__ == "__main__":
    main()
