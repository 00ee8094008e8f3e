"""Server optimizers: the server treats Δ = aggregate - global as a pseudo-gradient and takes
one optimizer step with it (Reddi et al. 2021, "Adaptive Federated Optimization",
https://arxiv.org/abs/2003.00295, Algorithm 2).

Pure tensor steps (dicts of tensors in, new dicts out, inputs never modified), computed in
float64 and returned in each parameter's dtype; :class:`ServerOptimizer` carries their state
from round to round and hands it to the round checkpoint as named tensors, so a resumed run
continues with exactly the moments it stopped with. Options: ``fedvl.options.server_opt``.
"""

from __future__ import annotations

import torch

from fedvl.algorithms.aggregate import Params


def _pseudo_gradient(global_params: Params, aggregate: Params) -> Params:
    return {k: aggregate[k].to(torch.float64) - g.to(torch.float64) for k, g in global_params.items()}


def fedavgm_step(global_params: Params, aggregate: Params, momentum_buf: Params, lr: float,
                 momentum: float) -> tuple[Params, Params]:
    """FedAvgM (Hsu et al. 2019, https://arxiv.org/abs/1909.06335): m = β·m + Δ, x = x + η·m.
    Returns (new global parameters, new momentum). With β = 0 and η = 1 the new global model
    is the aggregate (up to float rounding)."""
    delta = _pseudo_gradient(global_params, aggregate)
    new_m = {k: momentum * momentum_buf[k].to(torch.float64) + d for k, d in delta.items()}
    new_x = {k: (global_params[k].to(torch.float64) + lr * new_m[k]).to(global_params[k].dtype) for k in delta}
    return new_x, {k: m.to(momentum_buf[k].dtype) for k, m in new_m.items()}


def fedadam_step(global_params: Params, aggregate: Params, m: Params, v: Params, lr: float, beta1: float,
                 beta2: float, tau: float) -> tuple[Params, Params, Params]:
    """FedAdam (Reddi et al. 2021, Algorithm 2, no bias correction):
    m = β1·m + (1 - β1)·Δ, v = β2·v + (1 - β2)·Δ², x = x + η·m / (sqrt(v) + τ).
    Returns (new global parameters, new m, new v)."""
    delta = _pseudo_gradient(global_params, aggregate)
    new_m = {k: beta1 * m[k].to(torch.float64) + (1 - beta1) * d for k, d in delta.items()}
    new_v = {k: beta2 * v[k].to(torch.float64) + (1 - beta2) * d * d for k, d in delta.items()}
    new_x = {k: (global_params[k].to(torch.float64) + lr * new_m[k] / (new_v[k].sqrt() + tau))
             .to(global_params[k].dtype) for k in delta}
    return new_x, {k: t.to(m[k].dtype) for k, t in new_m.items()}, {k: t.to(v[k].dtype) for k, t in new_v.items()}


class ServerOptimizer:
    """``algorithm.server_opt`` (fedavgm or fedadam) over the travelling parameters, with its state:
    the momentum ``m`` (both) and the second moment ``v`` (fedadam), in each parameter's dtype.
    The state starts at m = 0 and v = τ² (the paper's v_{-1} >= τ²) with the first step."""

    def __init__(self, kind: str, lr: float, momentum: float, beta2: float = 0.99, tau: float = 1e-3):
        if kind not in ("fedavgm", "fedadam"):
            raise ValueError(f"unknown server optimizer {kind!r}")
        self.kind, self.lr, self.momentum, self.beta2, self.tau = kind, lr, momentum, beta2, tau
        self.m: Params = {}
        self.v: Params = {}

    def step(self, global_params: Params, aggregate: Params) -> Params:
        """The new global parameters after one server step from ``global_params`` towards ``aggregate``."""
        if not global_params:  # nothing travels (local training): no step to take
            return aggregate
        if not self.m:
            self.m = {k: torch.zeros_like(g) for k, g in global_params.items()}
            if self.kind == "fedadam":
                self.v = {k: torch.full_like(g, self.tau ** 2) for k, g in global_params.items()}
        if self.kind == "fedavgm":
            new, self.m = fedavgm_step(global_params, aggregate, self.m, self.lr, self.momentum)
        else:
            new, self.m, self.v = fedadam_step(global_params, aggregate, self.m, self.v, self.lr, self.momentum,
                                               self.beta2, self.tau)
        return new

    def state_tensors(self) -> Params:
        """The state as named tensors (``m.<name>``, ``v.<name>``) for the round checkpoint."""
        return {**{f"m.{k}": t for k, t in self.m.items()}, **{f"v.{k}": t for k, t in self.v.items()}}

    def load_state_tensors(self, tensors: Params, names: list[str]) -> bool:
        """Restore :meth:`state_tensors` for the travelling parameters ``names``. Returns False, and
        starts the state afresh, when ``tensors`` hold no complete state of this optimizer (a checkpoint
        made without it, or by the other one: a config change the resume was told to accept)."""
        m = {k[2:]: t for k, t in tensors.items() if k.startswith("m.")}
        v = {k[2:]: t for k, t in tensors.items() if k.startswith("v.")}
        if set(m) != set(names) or set(v) != (set(names) if self.kind == "fedadam" else set()):
            self.m, self.v = {}, {}
            return False
        self.m = {k: m[k] for k in names}
        self.v = {k: v[k] for k in names} if v else {}
        return True


def server_optimizer(cfg, pooled: bool) -> ServerOptimizer | None:
    """The run's server optimizer (None: the aggregate is the new global model, FedAvg). The pooled
    reference trains one model with no federation, so it takes no server step."""
    a = cfg.algorithm
    if a.server_opt == "none" or pooled:
        return None
    return ServerOptimizer(a.server_opt, a.server_lr, a.server_momentum, a.server_beta2, a.server_tau)
