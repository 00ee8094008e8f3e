"""Different LoRA ranks on different clients (``model.client_lora_ranks``), by zero-padding.

Real sites differ in GPU memory, so each may train a LoRA of its own rank (HetLoRA, Cho et al. 2024,
https://arxiv.org/abs/2401.06432). The model holds the largest rank R (``model.lora_rank``); a client of
rank r trains the first r rank components only: rows ``:r`` of every ``lora_A`` (R x in) and columns
``:r`` of every ``lora_B`` (out x R). It receives the global factors truncated to r, and what it sends
is zero beyond r. The server averages each rank component over the clients that trained it (a plain
mean of the zero-padded factors would shrink the components only the larger clients hold towards zero
every round). Every other travelling tensor is averaged as usual.

The other aggregation, ``model.lora_aggregation=stack``, merges the clients' products into the base
weights instead (FLoRA: :mod:`fedvl.algorithms.flora`); the clients train their ranks as here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from fedvl.algorithms.aggregate import Params
from fedvl.models.params import LORA_FACTOR
from fedvl.schema import ConfigError

def rank_mask(name: str, shape: torch.Size, rank: int) -> torch.Tensor | None:
    """1 where a rank-``rank`` client's factor may be non-zero, 0 beyond its rank; None if ``name`` is
    no LoRA factor (the whole tensor is the client's)."""
    m = LORA_FACTOR.match(name)
    if m is None:
        return None
    mask = torch.zeros(shape)
    if m["which"] == "A":
        mask[:rank] = 1.0
    else:
        mask[:, :rank] = 1.0
    return mask


def truncate(params: Params, rank: int) -> Params:
    """The factors as a rank-``rank`` client holds them: zero beyond its rank."""
    out = {}
    for k, v in params.items():
        m = rank_mask(k, v.shape, rank)
        out[k] = v if m is None else v * m.to(v.dtype)
    return out


def rank_aware_mean(updates: list[Params], ranks: list[int], weights: list[float]) -> Params:
    """Each rank component of each factor averaged (with ``weights``) over the clients whose rank holds
    it; a component no client holds stays zero. Other tensors: the weighted mean over all clients."""
    out: Params = {}
    for k, ref in updates[0].items():
        num = torch.zeros(ref.shape, dtype=torch.float64)
        den = torch.zeros(ref.shape, dtype=torch.float64)
        for u, r, w in zip(updates, ranks, weights):
            m = rank_mask(k, ref.shape, r)
            m = torch.ones(ref.shape, dtype=torch.float64) if m is None else m.double()
            num += w * m * u[k].double()
            den += w * m
        out[k] = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num)).to(ref.dtype)
    return out


@contextlib.contextmanager
def limited_rank(model: nn.Module, names: list[str], rank: int) -> Iterator[None]:
    """Within the block the model's factors train as rank ``rank``: the components beyond it are zeroed
    and their gradients masked (so AdamW, whose update is zero for a zero gradient and zero state, and
    whose decay keeps zero at zero, never moves them)."""
    named = dict(model.named_parameters())
    hooks = []
    with torch.no_grad():
        for n in names:
            p = named[n]
            m = rank_mask(n, p.shape, rank)
            if m is None:
                continue
            m = m.to(p.device, p.dtype)
            p.mul_(m)
            hooks.append(p.register_hook(lambda g, m=m: g * m))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def client_rank(cfg, client_ids: list[str], cid: str) -> int | None:
    """This client's LoRA rank, or None when every client uses ``model.lora_rank``."""
    ranks = cfg.model.client_lora_ranks
    if not ranks or cid not in client_ids:
        return None
    return ranks[client_ids.index(cid)]


def check_options(cfg) -> None:
    """model.client_lora_ranks: one rank per client, each within the model's rank, under a plain mean;
    model.lora_aggregation=stack: its own conditions (:func:`fedvl.algorithms.flora.check_options`)."""
    if cfg.model.lora_aggregation == "stack":
        from fedvl.algorithms.flora import check_options as check_stack

        check_stack(cfg)
    ranks, m = cfg.model.client_lora_ranks, cfg.model
    if not ranks:
        return
    clients = len(cfg.data.clients) if cfg.data.benchmark == "real" else cfg.data.num_clients
    problems = [
        (m.peft == "lora", f"model.client_lora_ranks needs model.peft=lora, not {m.peft}"),
        (len(ranks) == clients, f"model.client_lora_ranks gives {len(ranks)} ranks for {clients} clients; give one "
                                "per client"),
        (all(1 <= r <= m.lora_rank for r in ranks), f"model.client_lora_ranks must each be 1..model.lora_rank "
                                                    f"({m.lora_rank}): the model holds the largest rank"),
        (cfg.algorithm.aggregator == "mean" and not cfg.privacy.enabled and not cfg.run.secagg,
         "model.client_lora_ranks aggregates each rank component over the clients that hold it: it needs "
         "algorithm.aggregator=mean without privacy.enabled or run.secagg"),
    ]
    for ok, msg in problems:
        if not ok:
            raise ConfigError(msg)
