"""Pure tensor operations of the server: validation and averaging of client updates.

No model, no network, no config object: dicts of tensors in, dicts of tensors
out, so every rule can be tested with hand-computed tensors. Their options
(``algorithm.aggregator``, ``trim_ratio``, ``krum_*``, the clipping and ``max_update_norm``) are
``fedvl.options.aggregate``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch

from fedvl.schema import ConfigError

Params = dict[str, torch.Tensor]


class UpdateRejected(ValueError):
    """A client update the server must not aggregate; the message says why."""


def validate_update(reference: Params, update: Params, num_examples: int, *, max_examples: int | None = None,
                    max_update_norm: float = 0.0, reference_norm: float | None = None) -> None:
    """Raise :class:`UpdateRejected` unless ``update`` has exactly the keys, shapes,
    dtypes and devices of ``reference``, only finite values, a positive integer
    sample count (at most ``max_examples`` when the server knows the client's
    data size) and, if ``max_update_norm`` > 0, an update delta whose L2 norm is
    at most ``max_update_norm`` times the global parameters' norm (floored at 1,
    so a zero-initialised global does not reject everything). ``reference_norm``:
    that norm if the caller already has it (the server checks many updates
    against one global model per round)."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Integral) or num_examples <= 0:
        raise UpdateRejected(f"num_examples must be a positive integer, got {num_examples!r}"[:200])
    if max_examples is not None and num_examples > max_examples:
        raise UpdateRejected(f"num_examples {num_examples} is more than the client holds ({max_examples})"[:200])
    if not isinstance(update, Mapping):
        raise UpdateRejected(f"parameters must be a mapping of name -> tensor, got {type(update).__name__}")
    missing = reference.keys() - update.keys()
    extra = update.keys() - reference.keys()
    if missing or extra:
        # sorted by repr: a malformed update may mix key types that do not compare
        raise UpdateRejected(f"keys differ: missing {sorted(missing, key=repr)[:3]}, "
                             f"unexpected {sorted(extra, key=repr)[:3]}"[:300])
    for k, ref in reference.items():
        t = update[k]
        if not isinstance(t, torch.Tensor):
            raise UpdateRejected(f"{k}: not a tensor ({type(t).__name__})")
        if t.layout != torch.strided or t.device != ref.device:
            raise UpdateRejected(f"{k}: layout/device {t.layout}/{t.device} != expected {ref.layout}/{ref.device}")
        if t.shape != ref.shape:
            raise UpdateRejected(f"{k}: shape {tuple(t.shape)} != expected {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise UpdateRejected(f"{k}: dtype {t.dtype} != expected {ref.dtype}")
        if not torch.isfinite(t).all():
            raise UpdateRejected(f"{k}: contains NaN or Inf")
    if max_update_norm > 0:
        delta = math.sqrt(sum(float(torch.linalg.vector_norm(update[k].to(torch.float64) - g.to(torch.float64))) ** 2
                              for k, g in reference.items()))
        ref_norm = global_norm(reference) if reference_norm is None else reference_norm
        if not delta <= max_update_norm * max(ref_norm, 1.0):
            raise UpdateRejected(f"update norm {delta:.3g} is more than {max_update_norm:g} x the global "
                                 f"parameters' norm {ref_norm:.3g} (algorithm.max_update_norm)")


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
            acc.add_(u[k], alpha=w / total)  # promotes into the float64 accumulator without a copy
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


# ---------------------------------------------------------------- robust aggregation
# Every rule below works on whole parameter dicts and treats the concatenation of
# all travelling tensors as one vector (norms, distances), computed in float64 and
# returned in the reference dtype. They ignore sample counts on purpose: a
# malicious client could claim any count.


def deltas(reference: Params, updates: list[Params]) -> list[Params]:
    """u - g for every update, in float64."""
    return [{k: u[k].to(torch.float64) - g.to(torch.float64) for k, g in reference.items()} for u in updates]


def global_norm(params: Params) -> float:
    """L2 norm of all tensors together."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2 for t in params.values()))


def clip_update(reference: Params, update: Params, max_norm: float) -> Params:
    """g + Δ·min(1, S/‖Δ‖) with Δ = u - g: the update moved back towards the global
    parameters until its delta has L2 norm at most S (norm clipping, Sun et al. 2019,
    https://arxiv.org/abs/1911.07963; the per-client clip of DP-FedAvg)."""
    if not max_norm > 0:
        raise ValueError(f"clip norm must be > 0, got {max_norm}")
    (delta,) = deltas(reference, [update])
    factor = min(1.0, max_norm / max(global_norm(delta), 1e-300))
    return {k: (g.to(torch.float64) + delta[k] * factor).to(g.dtype) for k, g in reference.items()}


def median_norm(reference: Params, updates: list[Params]) -> float:
    """Median L2 norm of the updates' deltas: a clip bound that needs no tuning,
    since fewer than half the clients cannot move it past the honest norms."""
    return float(torch.tensor([global_norm(d) for d in deltas(reference, updates)], dtype=torch.float64).median())


def _stack(updates: list[Params], key: str) -> torch.Tensor:
    return torch.stack([u[key].to(torch.float64) for u in updates])


def coordinate_median(updates: list[Params]) -> Params:
    """Coordinate-wise median (Yin et al. 2018, https://arxiv.org/abs/1803.01498); for
    an even number of updates the mean of the two middle values."""
    if not updates:
        raise ValueError("nothing to aggregate: no client update")
    n = len(updates)
    out: Params = {}
    for k, ref in updates[0].items():
        s = _stack(updates, k).sort(dim=0).values
        mid = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        out[k] = mid.to(ref.dtype)
    return out


def trimmed_mean(updates: list[Params], beta: float) -> Params:
    """Coordinate-wise trimmed mean (Yin et al. 2018, https://arxiv.org/abs/1803.01498):
    per coordinate drop the floor(beta·n) largest and smallest values, average the rest."""
    if not updates:
        raise ValueError("nothing to aggregate: no client update")
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"trim ratio must be in [0, 0.5), got {beta}")
    n = len(updates)
    cut = math.floor(beta * n + 1e-9)  # the epsilon keeps e.g. 0.3 * 10 at 3 despite float rounding
    out: Params = {}
    for k, ref in updates[0].items():
        s = _stack(updates, k).sort(dim=0).values
        out[k] = s[cut:n - cut].mean(dim=0).to(ref.dtype)
    return out


def krum_scores(updates: list[Params], byzantine: int) -> list[float]:
    """Krum score of every update (Blanchard et al. 2017, https://arxiv.org/abs/1703.02891):
    the sum of squared distances to its n - f - 2 nearest other updates. With fewer
    updates than Krum's n > f + 2 (e.g. after rejections) the neighbour count is
    clamped to [1, n - 1] so the rule still picks the most central update."""
    n = len(updates)
    if n == 1:
        return [0.0]
    flat = torch.stack([torch.cat([u[k].to(torch.float64).reshape(-1) for k in updates[0]]) for u in updates])
    d2 = torch.cdist(flat, flat) ** 2
    k = min(max(n - byzantine - 2, 1), n - 1)
    scores = []
    for i in range(n):
        others = torch.cat([d2[i, :i], d2[i, i + 1:]])
        scores.append(float(others.sort().values[:k].sum()))
    return scores


def krum(updates: list[Params], byzantine: int, select: int = 1) -> Params:
    """Krum (``select=1``): the update with the lowest Krum score; multi-Krum
    (``select=m``): the plain mean of the m lowest-scoring updates."""
    if not updates:
        raise ValueError("nothing to aggregate: no client update")
    scores = krum_scores(updates, byzantine)
    order = sorted(range(len(updates)), key=lambda i: (scores[i], i))
    chosen = [updates[i] for i in order[:max(1, min(select, len(updates)))]]
    return weighted_average(chosen, [1.0] * len(chosen))


def aggregate_updates(reference: Params, updates: list[Params], num_examples: list[int], *, aggregator: str = "mean",
                      weighting: str = "weighted", trim_ratio: float = 0.1, krum_byzantine: int = 1,
                      krum_select: int = 1, clip_norm: float = 0.0, clip_to_median: bool = False) -> Params:
    """Optional norm clipping of every update's delta (a fixed bound, or the round's
    median norm), then one aggregation rule: ``mean`` (FedAvg with ``weighting``),
    ``median``, ``trimmed_mean`` or ``krum``."""
    if clip_to_median:
        clip_norm = median_norm(reference, updates)
    if clip_norm > 0:
        updates = [clip_update(reference, u, clip_norm) for u in updates]
    if aggregator == "mean":
        return fedavg(updates, num_examples, weighting)
    if aggregator == "median":
        return coordinate_median(updates)
    if aggregator == "trimmed_mean":
        return trimmed_mean(updates, trim_ratio)
    if aggregator == "krum":
        return krum(updates, krum_byzantine, krum_select)
    raise ValueError(f"unknown aggregator {aggregator!r}")


# ---------------------------------------------------------------- client-level differential privacy


def dp_mean(reference: Params, updates: list[Params], clip_norm: float, noise_multiplier: float,
            generator: torch.Generator) -> Params:
    """DP-FedAvg server step (McMahan et al. 2018, https://arxiv.org/abs/1710.06963):
    clip every client's delta to L2 norm S, average uniformly over the m updates and
    add Gaussian noise of std z·S/m to every coordinate (the sum has sensitivity S).
    Noise is drawn in float64, key by key in the reference's order, from ``generator``."""
    if not updates:
        raise ValueError("nothing to aggregate: no client update")
    clipped = [clip_update(reference, u, clip_norm) for u in updates]
    m = len(clipped)
    std = noise_multiplier * clip_norm / m
    out: Params = {}
    for k, g in reference.items():
        mean = sum(u[k].to(torch.float64) for u in clipped) / m
        noise = torch.randn(g.shape, generator=generator, dtype=torch.float64) * std
        out[k] = (mean + noise).to(g.dtype)
    return out


def check_options(cfg, pooled: bool) -> None:
    """The server's aggregation and update-checking options (``algorithm.aggregator`` and friends),
    run when a config loads; ``pooled``: the algorithm trains one model on pooled data (no rounds
    of client updates, so Krum's client count does not apply)."""
    a = cfg.algorithm
    if a.clip_update_norm > 0 and a.clip_to_median:  # each number's own range is checked on load (schema)
        raise ConfigError("set algorithm.clip_update_norm or algorithm.clip_to_median, not both")
    if a.aggregator == "krum" and not pooled:
        per_round = max(1, round(a.fraction_fit * cfg.data.num_clients))
        if per_round < a.krum_byzantine + 3:
            raise ConfigError(f"algorithm.aggregator=krum with krum_byzantine={a.krum_byzantine} needs at least "
                              f"{a.krum_byzantine + 3} clients per round, got {per_round}")
        if a.krum_select > per_round - a.krum_byzantine:
            raise ConfigError(f"algorithm.krum_select must be <= clients per round - krum_byzantine "
                              f"({per_round - a.krum_byzantine}), got {a.krum_select}")
