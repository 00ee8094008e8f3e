"""LoRA aggregation by stacking (``model.lora_aggregation=stack``), FLoRA-style.

FLoRA (Wang et al. 2024, https://arxiv.org/abs/2409.05976) stacks the clients' LoRA factors instead of
averaging them: with normalised weights p_k, ``B = [p_1 B_1, ..., p_K B_K]`` (out x sum r_k) and
``A = [A_1; ...; A_K]`` (sum r_k x in) give ``B @ A = sum_k p_k B_k A_k`` exactly. Averaging A and B
separately gives ``(sum_k p_k B_k)(sum_k p_k A_k)`` instead, whose cross terms ``B_j A_k`` no client
trained. The stacked product is merged into the frozen base weight of every LoRA-targeted Linear,
``W <- W + scaling * sum_k p_k B_k A_k``, and every client starts the next round from fresh factors (A
as peft initialises it, B zero, so the model is exactly the merged base). Any client ranks work, equal
ones too (``model.client_lora_ranks``): a client of rank r_k trains the first r_k components of the
model's rank-R factors (:mod:`fedvl.algorithms.hetlora`), so its product is ``B_k[:, :r_k] A_k[:r_k]``
and its forward used peft's ``scaling = lora_alpha / R`` (the model's rank, where FLoRA's clients each
scale by their own r_k: here the merge adds what each client's forward computed).

What travels: down, the global travelling parameters plus the merged base weights (names ending in
``.base_layer.weight``: :func:`merged_bases`), frozen on the client; up, the travelling parameters only
(the factors and whatever else travels, e.g. the head). So the base weights cost ``out x in`` per
targeted layer down each round, on top of the factors both ways (the run's ``summary.json`` reports
``bytes_down_per_client_round`` beside ``bytes_up_per_client_round``). Every other travelling tensor is
averaged as usual.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedvl.algorithms.aggregate import Params, weighted_average
from fedvl.models.params import LORA_FACTOR
from fedvl.schema import ConfigError
from fedvl.seeding import derived_seed



def merged_bases(travel: list[str]) -> list[str]:
    """The base weights that stacking merges into: one per module whose LoRA factors travel."""
    modules = [m.group("module") for n in travel if (m := LORA_FACTOR.match(n)) and m.group("which") == "A"]
    return [f"{m}.base_layer.weight" for m in dict.fromkeys(modules)]


def fresh_factors(global_params: Params, seed: int, rnd: int) -> Params:
    """The factors every client starts the round after ``rnd`` from: each ``lora_A`` drawn as peft
    initialises it (kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))) from
    (seed, round, name), so every runtime and a resume draw the same; each ``lora_B`` zero."""
    out: Params = {}
    for name, g in global_params.items():
        m = LORA_FACTOR.match(name)
        if m is None:
            continue
        t = torch.zeros(g.shape, dtype=torch.float32)
        if m.group("which") == "A":
            gen = torch.Generator().manual_seed(derived_seed(seed, "lora-init", rnd, name))
            nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=gen)
        out[name] = t.to(g.dtype)
    return out


def stack_merge(global_params: Params, updates: list[Params], ranks: list[int], weights: list[float],
                scaling: float, fresh: Params) -> Params:
    """The server step of stacking (see the module docstring); never modifies its arguments.

    ``global_params``: what went down, base weights included; ``updates``: what each client sent
    back (factors and the other travelling tensors, no base weights); ``ranks``: each client's LoRA
    rank (components beyond it are ignored); ``weights``: each client's weight (normalised here);
    ``fresh``: the next round's factors (:func:`fresh_factors`). Returns the new global parameters:
    every merged base ``W + scaling * sum_k p_k B_k[:, :r_k] A_k[:r_k]`` (accumulated in float64), the
    factors reset to ``fresh``, every other travelling tensor the weighted mean."""
    if len(updates) != len(ranks):
        raise ValueError(f"{len(updates)} updates but {len(ranks)} ranks")
    # every tensor but the factors: the weighted mean (which also checks the weights)
    out = weighted_average([{k: v for k, v in u.items() if not LORA_FACTOR.match(k)} for u in updates], weights)
    p = [w / float(sum(weights)) for w in weights]
    deltas: dict[str, torch.Tensor] = {}  # base weight name -> sum_k p_k B_k A_k over its adapters
    for name in updates[0]:
        m = LORA_FACTOR.match(name)
        if m is None or m.group("which") != "A":
            continue
        b_name = f"{m.group('module')}.lora_B.{m.group('adapter')}.weight"
        base = f"{m.group('module')}.base_layer.weight"
        if base not in global_params:
            raise KeyError(f"stacking merges into {base}, which is not among the global parameters")
        acc = deltas.setdefault(base, torch.zeros(global_params[base].shape, dtype=torch.float64))
        for u, r, pk in zip(updates, ranks, p):
            acc += pk * (u[b_name][:, :r].double() @ u[name][:r].double())
    for name, g in global_params.items():
        if name in deltas:
            out[name] = g.double() + scaling * deltas[name]
        elif LORA_FACTOR.match(name):
            out[name] = fresh[name]
    # in the global parameters' order and dtypes (updates may come in a half-precision transport dtype)
    return {name: out[name].to(g.dtype) for name, g in global_params.items()}


def check_options(cfg) -> None:
    """model.lora_aggregation=stack: LoRA, and a server step that is the plain mean of every client's update."""
    m, a = cfg.model, cfg.algorithm
    problems = [
        (m.peft == "lora", f"model.lora_aggregation=stack needs model.peft=lora, not {m.peft}"),
        (a.aggregator == "mean" and not a.clip_update_norm > 0 and not a.clip_to_median and not cfg.privacy.enabled
         and not cfg.run.secagg,
         "model.lora_aggregation=stack merges every client's LoRA product into the base weights: it needs "
         "algorithm.aggregator=mean without algorithm.clip_update_norm, algorithm.clip_to_median, "
         "privacy.enabled or run.secagg"),
        (a.server_opt == "none", f"model.lora_aggregation=stack restarts the LoRA factors every round: "
                                 f"algorithm.server_opt={a.server_opt} has no trajectory to follow (use none)"),
        (m.quantize == "none", "model.lora_aggregation=stack merges into the base weights, which "
                               "model.quantize=4bit stores in 4 bits: use model.quantize=none"),
    ]
    for ok, msg in problems:
        if not ok:
            raise ConfigError(msg)
