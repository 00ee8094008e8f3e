"""What trains and what travels, decided by parameter *name* and role, never by
fishing in a state dict (cf. peft ``get_peft_model_state_dict(adapter_name=...)``).

Every parameter belongs to one group:
  ``vision``            frozen MobileNetV2 (never trains)
  ``backbone``          pretrained MiniLM weights
  ``adapter.<role>``    bottleneck adapters (roles: shared / local / teacher)
  ``lora.<role>``       peft LoRA matrices of that role
  ``prompt.<role>``     soft prompt of that role (prompt tuning)
  ``connector``, ``head`` new modules: the head always trains; the connector too, except on
                        the VL-pretrained base, where it belongs to the frozen foundation
"""

from __future__ import annotations

import re

import torch
from torch import nn

Params = dict[str, torch.Tensor]

_ADAPTER = re.compile(r"\.adapters\.([A-Za-z0-9_]+)\.")
_LORA = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B)\.([A-Za-z0-9_]+)")
# peft's LoRA factors of a Linear: <module>.lora_A.<adapter>.weight (r x in) and <module>.lora_B.<adapter>.weight
# (out x r), beside the wrapped layer's own <module>.base_layer.weight (out x in)
LORA_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<adapter>[^.]+)\.weight$")


def param_group(name: str) -> str:
    if name.startswith("vision."):
        return "vision"
    if name.startswith("connector."):
        return "connector"
    if name.startswith("head."):
        return "head"
    if name.startswith("prompt."):
        return "prompt." + name.split(".")[1]
    if m := _ADAPTER.search(name):
        return f"adapter.{m.group(1)}"
    if m := _LORA.search(name):
        return f"lora.{m.group(1)}"
    return "backbone"


def _is_bias(name: str) -> bool:
    return name.endswith(".bias")


_LAYERNORM = re.compile(r"layer_?norm", re.IGNORECASE)  # BERT: LayerNorm; ViLT: layernorm_*; CLIP: layer_norm*


def _is_layernorm(name: str) -> bool:
    return _LAYERNORM.search(name) is not None


def trainable_names(model: nn.Module, method: str, roles: tuple[str, ...] = ("shared",)) -> list[str]:
    """Names of the parameters a PEFT ``method`` trains (the head always, the connector unless the
    model's ``frozen_groups`` holds it: with the VL-pretrained base it belongs to the foundation).

    ``roles``: which adapter / LoRA / prompt roles train (FedDAT trains shared
    and local, never teacher).
    """
    names = []
    frozen = set(getattr(model, "frozen_groups", ()))  # e.g. the VL base's connector
    for name, _ in model.named_parameters():
        g = param_group(name)
        if g == "vision" or (g in frozen and method != "full"):  # full fine-tuning trains everything
            continue
        if g in ("connector", "head"):
            names.append(name)
        elif method == "full" and g == "backbone":
            names.append(name)
        elif method == "bitfit" and g == "backbone" and _is_bias(name):
            names.append(name)
        elif method == "layernorm" and g == "backbone" and _is_layernorm(name):
            names.append(name)
        elif method in ("adapter", "lora", "prompt") and g.split(".")[0] == method and g.split(".", 1)[1] in roles:
            names.append(name)
    return names


def set_trainable(model: nn.Module, names: list[str]) -> None:
    keep = set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)


def names_in_groups(names: list[str], groups: set[str]) -> list[str]:
    """The subset of ``names`` whose group (or group family, e.g. ``adapter``) is listed."""
    out = []
    for n in names:
        g = param_group(n)
        if g in groups or g.split(".")[0] in groups:
            out.append(n)
    return out


def get_params(model: nn.Module, names: list[str]) -> Params:
    """Detached CPU copies of the named parameters (what gets sent, aggregated or stored): device-free,
    so aggregation runs on the CPU whatever device trains, and saved state loads anywhere."""
    named = dict(model.named_parameters())
    return {n: named[n].detach().to("cpu", copy=True) for n in names}


@torch.no_grad()
def set_params(model: nn.Module, params: Params) -> None:
    named = dict(model.named_parameters())
    for n, t in params.items():
        named[n].copy_(t)  # copy_ moves CPU tensors to the model's device


def count(model: nn.Module, names: list[str] | None = None) -> int:
    named = dict(model.named_parameters())
    return sum(named[n].numel() for n in (names if names is not None else named))


def nbytes(params: Params) -> int:
    return sum(t.numel() * t.element_size() for t in params.values())
