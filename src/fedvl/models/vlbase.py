"""The VL-pretrained base: its settings, its key, and loading it into a model.

``fedvl pretrain vl`` (:mod:`fedvl.pretrain.vl`) trains the connector, a
low-rank delta on the text layers and the text LayerNorms with ViLT's objectives
(image-text matching with hard negatives, masked language modelling) on a public
caption corpus. What it produces is small (float16 safetensors, a few MB) and is
*merged* into the model when it is built: the low-rank delta is added to the
frozen weights (W <- W + B A), so a fine-tuning run sees an ordinary model whose
text layers are those of a vision-language foundation model.

The artifact for the default model ships in the package (``weights/``), named by
:func:`pretrain_key`, a hash of every setting that changes the weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

SHIPPED = Path(__file__).parent / "weights"
VERSION = 1  # bump when the pretraining code changes what it produces


@dataclass
class VLPretrainConfig:
    """Settings of ``fedvl pretrain vl`` (``key=value`` on the command line or a YAML mapping)."""

    model: Literal["default", "tiny"] = "default"
    """default: MiniLM-L6 + MobileNetV2 (the shipped base); tiny: the random test twin."""
    image_size: int = 96
    vision_tokens: Literal["multiscale", "s32", "s16"] = "multiscale"
    max_text_len: int = 40
    corpus_images: int = 3000
    """Images of the public caption corpus (the ``gallery`` style, which no benchmark client uses)."""
    captions_per_image: int = 4
    held_out_images: int = 300
    """Images (a separate seed) whose captions measure held-out ITM accuracy."""
    max_objects: int = 3
    count_negatives: Literal["uniform", "matched"] = "matched"
    """How a false count caption picks its number (fedvl.data.captions.describe): matched (as true
    captions state them; the shipped base) or uniform (the first base: the number alone gives the
    answer away)."""
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    warmup: float = 0.05
    """Share of the steps over which the learning rate rises (one-cycle schedule)."""
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_targets: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])
    itm_swap: float = 0.0
    """Share of true captions shown another image as an extra ITM negative (ViLT's negatives; count
    captions excepted). 0: hard-negative captions only (the shipped base)."""
    mlm_prob: float = 0.15
    mlm_grounded_prob: float | None = 0.5
    """Masking probability of the image-decided words (colour, shape, size, position, number);
    None: mlm_prob like every other word (the first base). 0.5 (the shipped base) lifted held-out
    grounding from 62% to 83% in a 300-step diagnostic (docs/results.md)."""
    itm_weight: float = 1.0
    mlm_weight: float = 1.0
    seed: int = 0
    # --- not part of the key: they do not change the weights
    threads: int = 2
    cache_dir: str = "results/cache"
    checkpoint_every: int = 100
    """Steps between resumable checkpoints (a killed pretraining continues from the last one)."""
    eval_every: int = 100
    """Steps between held-out ITM evaluations (the curve in the PNG)."""
    device: str = "auto"
    """auto / cpu / cuda / cuda:N, as run.device (the weights are the same up to float rounding)."""

    RANGES: ClassVar[dict[str, str]] = {
        "image_size": "32..1024 (the upper bound keeps images within memory)",
        "max_text_len": "4..512 (the text encoders hold 512 positions)",
        "corpus_images": "1..100000 (the corpus is rendered in memory)", "captions_per_image": "1..64",
        "held_out_images": "1..100000 (rendered in memory)", "max_objects": "1..4", "steps": ">= 1",
        "batch_size": "1..4096", "lr": "> 0", "warmup": "(0, 1)", "lora_rank": "1..1024", "lora_alpha": ">= 1",
        "itm_swap": "[0, 1)", "mlm_prob": "(0, 1)", "mlm_grounded_prob": "(0, 1)", "itm_weight": ">= 0",
        "mlm_weight": ">= 0", "seed": "0..4294967295 (numpy's and torch's generators take 32-bit seeds)",
        "threads": "1..1024", "checkpoint_every": ">= 1", "eval_every": ">= 1",
    }
    """Each numeric setting's range, checked on load (``fedvl.schema._within``)."""

    def validate(self) -> None:
        """Cross-field checks, one ConfigError line each (``load_section`` calls this)."""
        from fedvl.models.adapters import check_lora_targets

        check_lora_targets("lora_targets", self.lora_targets, "bert")


_NOT_KEYED = {"threads", "cache_dir", "checkpoint_every", "eval_every", "device"}


def pretrain_key(cfg: VLPretrainConfig) -> str:
    spec = {k: v for k, v in asdict(cfg).items() if k not in _NOT_KEYED}
    # the values before these options existed: bases made then keep their key
    if spec["count_negatives"] == "uniform":
        del spec["count_negatives"]
    if spec["itm_swap"] == 0.0:
        del spec["itm_swap"]
    if spec["mlm_grounded_prob"] is None:
        del spec["mlm_grounded_prob"]
    spec["version"] = VERSION
    return "vl-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def shipped_path(model_name: str) -> Path:
    """The shipped base of ``model_name`` (only the default model has one)."""
    return SHIPPED / f"{pretrain_key(VLPretrainConfig(model=model_name))}.safetensors"  # type: ignore[arg-type]


class BaseWeightsError(RuntimeError):
    """The VL base cannot be loaded (missing, corrupt, or made for another model shape)."""


def lowrank_targets(text: nn.Module, targets: list[str]) -> dict[str, nn.Linear]:
    """The Linear layers of the text *encoder* the low-rank delta adapts, by name under ``text.``."""
    return {f"encoder.{n}": m for n, m in text.encoder.named_modules()
            if isinstance(m, nn.Linear) and n.split(".")[-1] in targets}


def layernorm_params(text: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in text.named_parameters() if "LayerNorm" in n}


def base_state(model: nn.Module, deltas: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """What a base file holds: ``connector.*``, ``text.<LayerNorm>``, ``delta.<linear>.A/B`` (scale folded in B)."""
    state = {f"connector.{k}": v for k, v in model.connector.state_dict().items()}
    state.update({f"text.{k}": v for k, v in layernorm_params(model.text).items()})
    for name, (a, b) in deltas.items():
        state[f"delta.{name}.A"], state[f"delta.{name}.B"] = a, b
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def read_base(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise BaseWeightsError(f"VL base weights not found: {path} (make them with `fedvl pretrain vl`, "
                               "or run with model.base=raw)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BaseWeightsError(f"VL base weights {path} cannot be read ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}); reinstall fedvl or rerun "
                               "`fedvl pretrain vl`") from None
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (OSError, ValueError):
        meta = {}
    return state, meta


@torch.no_grad()
def load_base(model: nn.Module, path: Path) -> dict:
    """Merge the base at ``path`` into ``model`` (connector, LayerNorms, W += B A); returns its report."""
    state, meta = read_base(path)
    own_conn = model.connector.state_dict()
    norms = layernorm_params(model.text)
    problems = [k for k in own_conn if f"connector.{k}" not in state
                or state[f"connector.{k}"].shape != own_conn[k].shape]
    problems += [k for k, p in norms.items() if f"text.{k}" not in state or state[f"text.{k}"].shape != p.shape]
    linears = dict(model.text.named_modules())
    deltas = sorted({k[len("delta."):].rsplit(".", 1)[0] for k in state if k.startswith("delta.")})
    for name in deltas:
        lin = linears.get(name)
        a, b = state.get(f"delta.{name}.A"), state.get(f"delta.{name}.B")
        if not isinstance(lin, nn.Linear) or a is None or b is None or (b.shape[0], a.shape[1]) != lin.weight.shape:
            problems.append(name)
    if problems:
        raise BaseWeightsError(f"VL base weights {path} do not fit this model (first mismatch: {problems[0]}); "
                               "pretrain a base for it with `fedvl pretrain vl` (same model, image_size, "
                               "vision_tokens)")
    model.connector.load_state_dict({k: state[f"connector.{k}"].float() for k in own_conn})
    for k, p in norms.items():
        p.copy_(state[f"text.{k}"].float())
    for name in deltas:
        lin = linears[name]
        lin.weight.add_((state[f"delta.{name}.B"].float() @ state[f"delta.{name}.A"].float()).to(lin.weight.dtype))
    return meta
