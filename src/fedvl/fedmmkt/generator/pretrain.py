"""Pretraining the server generator on the public source domain, and finding a pretrained one.

``fedvl pretrain t2i`` and every FedMMKT run go through :func:`load_or_pretrain`, which
looks, in order, at ``t2i.weights`` (an explicit file), the artifact shipped in the
package (``weights/<key>.safetensors``, when the pretraining settings match the ones it
was made with), the cache (``run.cache_dir/t2i/<key>.safetensors``), and only then
pretrains (seeded: the same settings give the same weights) and caches the result.
``key`` hashes every setting that changes the weights, so a changed setting never
picks up stale weights. Each file has a JSON beside it with the loss curve and the
source-domain judge accuracy measured when it was made.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from fedvl.fedmmkt.generator.judge import fidelity, judge_outputs, train_judge
from fedvl.fedmmkt.generator.t2i import Sampling, T2IGenerator, build_generator
from fedvl.io import atomic_write
from fedvl.fedmmkt.options import FedMMKTConfig, T2IConfig
from fedvl.fedmmkt.data import class_names, make_set, prompt
from fedvl.schema import ConfigError

SHIPPED = Path(__file__).parent / "weights"
PRETRAIN_FIELDS = ("source", "text", "channels", "image_size", "max_text_len", "prediction", "pretrain_steps",
                   "pretrain_batch", "pretrain_lr", "pretrain_per_class", "cond_dropout")
VERSION = 1  # bump when the pretraining code changes what it produces


def pretrain_key(t2i: T2IConfig, classes: list[str]) -> str:
    spec = {k: asdict(t2i)[k] for k in PRETRAIN_FIELDS}
    spec.update(classes=classes, version=VERSION)
    return "t2i-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def pretrain(gen: T2IGenerator, t2i: T2IConfig, classes: list[str], seed: int = 0,
             on_step: Callable[[int, int, float], None] | None = None) -> list[float]:
    """Train the whole UNet on public source-domain images with the DDPM objective
    (AdamW, one-cycle schedule, gradient clipping at 1). Returns the loss per step."""
    data = make_set(classes, "source", t2i.pretrain_per_class, t2i.image_size, seed=10_000 + seed)
    params = [p for p in gen.unet.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=t2i.pretrain_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, t2i.pretrain_lr, total_steps=t2i.pretrain_steps,
                                                pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    gen.train()
    losses = []
    for step in range(1, t2i.pretrain_steps + 1):
        idx = torch.randint(0, len(data), (t2i.pretrain_batch,), generator=g)
        loss = gen.loss(data.images[idx], [data.captions[i] for i in idx.tolist()], cond_dropout=t2i.cond_dropout,
                        generator=g)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"generator pretraining diverged at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step:
            on_step(step, t2i.pretrain_steps, losses[-1])
    return losses


def source_fidelity(gen: T2IGenerator, t2i: T2IConfig, classes: list[str], per_class: int = 8,
                    seed: int = 0) -> dict[str, float]:
    """Judge accuracy and feature distance of generated images on the *source* domain: the
    check that pretraining converged (aim: above 80%) before federating."""
    real = make_set(classes, "source", 40, t2i.image_size, seed=20_000 + seed)
    judge = train_judge(real.images, real.labels, len(classes), seed)
    held = make_set(classes, "source", per_class, t2i.image_size, seed=30_000 + seed)
    labels = torch.arange(len(classes)).repeat(per_class)
    images = gen.sample([prompt(classes[k]) for k in labels.tolist()],
                        Sampling(t2i.sample_steps, t2i.guidance, t2i.sample_batch),
                        torch.Generator().manual_seed(seed))
    real_feats, real_pred = judge_outputs(judge, held.images)
    out = fidelity(judge, images, labels, real_feats)
    out["judge_real_acc"] = float((real_pred == held.labels).float().mean())
    return out


def save_generator(gen: T2IGenerator, path: Path, meta: dict) -> None:
    """Base UNet weights as float16 safetensors (half the size; the model computes in float32)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in gen.unet.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))


def load_weights(gen: T2IGenerator, path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"generator weights {path} cannot be read ({type(e).__name__}: {e})") from None
    own = gen.unet.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise ValueError(f"generator weights {path} do not fit this t2i configuration (other channels or text width)")
    meta = path.with_suffix(".json")
    try:
        report = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
        if not isinstance(report, dict):
            raise ValueError(f"a JSON {type(report).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise ValueError(f"the report beside generator weights {path}, {meta}, cannot be read "
                         f"({type(e).__name__}: {e})") from None
    gen.unet.load_state_dict({k: v.float() for k, v in state.items()})
    return report


def load_or_pretrain(t2i: T2IConfig, kt: FedMMKTConfig, cache_dir: Path, status=print,
                     on_step=None, force: bool = False, device: str | torch.device = "cpu") -> tuple[T2IGenerator, dict]:
    """The pretrained generator for these settings (see the module docstring for the order),
    on ``device`` (built on the CPU from the seed, so its initialisation is the same everywhere)."""
    classes = class_names(kt.colors, kt.shapes)
    gen = build_generator(t2i, seed=0).to(device)
    if t2i.source != "fedvl":
        return gen, {"source": t2i.source}  # a real pipeline comes pretrained
    if t2i.weights and not force:
        status(f"generator weights: {t2i.weights}")
        try:
            return gen, load_weights(gen, Path(t2i.weights))
        except ValueError as e:  # the user's own file: named, never replaced by a pretraining
            raise ConfigError(f"t2i.weights: {e}") from None
    key = pretrain_key(t2i, classes)
    for path in (SHIPPED / f"{key}.safetensors", Path(cache_dir) / "t2i" / f"{key}.safetensors"):
        if path.is_file() and not force:
            try:
                meta = load_weights(gen, path)
            except ValueError as e:
                status(f"ignoring {path}: {e}")
                continue
            status(f"pretrained generator {key} from {path}")
            return gen, meta
    status(f"pretraining the generator on the public source domain ({t2i.pretrain_steps} steps); "
           f"cached as {key}")
    t0 = time.perf_counter()
    losses = pretrain(gen, t2i, classes, seed=0, on_step=on_step)
    seconds = time.perf_counter() - t0
    fid = source_fidelity(gen, t2i, classes)
    meta = {"key": key, "settings": {k: asdict(t2i)[k] for k in PRETRAIN_FIELDS}, "classes": classes,
            "pretrain_seconds": seconds, "loss": losses, "source_fidelity": fid}
    save_generator(gen, Path(cache_dir) / "t2i" / f"{key}.safetensors", meta)
    # the saved float16 weights are what every later run loads: use exactly those
    load_weights(gen, Path(cache_dir) / "t2i" / f"{key}.safetensors")
    return gen, meta
