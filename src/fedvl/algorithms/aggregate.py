"""Pure tensor operations of the server: validation and averaging of client updates.

No model, no network, no config object: dicts of tensors in, dicts of tensors
out, so every rule can be tested with hand-computed tensors.
"""

from __future__ import annotations

import math

import torch

Params = dict[str, torch.Tensor]


class UpdateRejected(ValueError):
    """A client update the server must not aggregate; the message says why."""


def validate_update(reference: Params, update: Params, num_examples: int) -> None:
    """Raise :class:`UpdateRejected` unless ``update`` has exactly the keys, shapes
    and dtypes of ``reference``, only finite values and a positive sample count."""
    if not isinstance(num_examples, int) or num_examples <= 0:
        raise UpdateRejected(f"num_examples must be a positive integer, got {num_examples!r}")
    missing = reference.keys() - update.keys()
    extra = update.keys() - reference.keys()
    if missing or extra:
        raise UpdateRejected(f"keys differ: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}")
    for k, ref in reference.items():
        t = update[k]
        if not isinstance(t, torch.Tensor):
            raise UpdateRejected(f"{k}: not a tensor")
        if t.shape != ref.shape:
            raise UpdateRejected(f"{k}: shape {tuple(t.shape)} != expected {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise UpdateRejected(f"{k}: dtype {t.dtype} != expected {ref.dtype}")
        if not torch.isfinite(t).all():
            raise UpdateRejected(f"{k}: contains NaN or Inf")


def weighted_average(updates: list[Params], weights: list[float]) -> Params:
    """sum_i w_i * u_i / sum_i w_i, key by key (accumulated in float64)."""
    if not updates:
        raise ValueError("nothing to average: no client update")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    total = float(sum(weights))
    if not (total > 0 and math.isfinite(total)) or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    out: Params = {}
    for k, ref in updates[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for u, w in zip(updates, weights):
            acc += u[k].to(torch.float64) * (w / total)
        out[k] = acc.to(ref.dtype)
    return out


def fedavg(updates: list[Params], num_examples: list[int], weighting: str = "weighted") -> Params:
    """FedAvg (McMahan et al. 2017, https://arxiv.org/abs/1602.05629).

    ``weighting="weighted"`` weights by sample count (the paper);
    ``"uniform"`` is the plain mean the FedDAT reference code uses.
    """
    if weighting == "weighted":
        weights = [float(n) for n in num_examples]
    elif weighting == "uniform":
        weights = [1.0] * len(updates)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    return weighted_average(updates, weights)
