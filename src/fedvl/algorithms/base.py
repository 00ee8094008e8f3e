"""One interface for every algorithm: a server :class:`ServerRule` and a client
:class:`ClientUpdate`, kept together in one module and registered together
as one :class:`Algorithm`.

The round loop lives in :mod:`fedvl.rounds.loop` and is written
once; an algorithm only overrides hooks (cf. Flower's ``Strategy.start`` with
``FedMedian`` overriding ``aggregate_train`` only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from fedvl.algorithms.aggregate import Params, aggregate_updates, dp_mean
from fedvl.schema import ExperimentConfig
from fedvl.engine.device import FP32_CPU, Amp
from fedvl.data.features import EncodedSplit
from fedvl.engine.loops import TrainResult, cross_entropy_step, evaluate, train_local
from fedvl.models.params import get_params, param_group
from fedvl.seeding import derived_seed

if TYPE_CHECKING:
    from fedvl.engine.shard import Shard


@dataclass
class FitResult:
    """What a client sends back: only travelling tensors, a sample count, metrics."""

    params: Params
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ClientContext:
    """Everything a client update may touch. ``model`` is the one shared model
    instance: the runtime has already loaded the global travelling parameters
    and this client's own local parameters into it."""

    client_id: str
    model: torch.nn.Module
    train: EncodedSplit
    cfg: ExperimentConfig
    round: int
    global_params: Params
    travel_names: list[str]
    trainable_names: list[str]
    generator: torch.Generator
    on_step: Callable[[int, int, float], None] | None = None
    amp: Amp = FP32_CPU
    """The model's device and compute precision (run.device / run.precision)."""
    shard: Shard | None = None
    """This process is one rank of several training the client together (``run.client_procs``):
    ``model`` is its replica, ``amp`` reduces the gradients, metrics that are batch means are
    weighted by ``shard.share`` and summed over the ranks (:mod:`fedvl.engine.shard`)."""


class ClientUpdate:
    """Client half. Subclasses override :meth:`fit` (usually only ``make_step``)."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg

    def optimizer(self, ctx: ClientContext) -> torch.optim.Optimizer:
        a = self.cfg.algorithm
        named = dict(ctx.model.named_parameters())
        if self.cfg.model.peft == "full" and a.full_lr > 0:
            # pretrained weights diverge at the learning rate new modules need (the paper's
            # full fine-tuning baseline uses a far smaller one), so they get their own
            backbone = [n for n in ctx.trainable_names if param_group(n) == "backbone"]
            rest = [n for n in ctx.trainable_names if param_group(n) != "backbone"]
            groups = [{"params": [named[n] for n in rest]},
                      {"params": [named[n] for n in backbone], "lr_scale": a.full_lr / a.lr}]
            return torch.optim.AdamW([g for g in groups if g["params"]], lr=a.lr, weight_decay=a.weight_decay)
        params = [named[n] for n in ctx.trainable_names]
        return torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)

    def make_step(self, ctx: ClientContext, optimizer: torch.optim.Optimizer):
        return cross_entropy_step(ctx.model, optimizer, amp=ctx.amp)

    def lr_at(self, ctx: ClientContext) -> Callable[[float], float]:
        a = self.cfg.algorithm
        if a.lr_schedule == "constant":
            return lambda frac: a.lr
        # cosine over the whole run: the schedule continues across rounds
        return lambda frac: a.lr * 0.5 * (1 + np.cos(np.pi * ((ctx.round - 1 + frac) / a.rounds)))

    def train(self, ctx: ClientContext) -> TrainResult:
        opt = self.optimizer(ctx)
        a = self.cfg.algorithm
        return train_local(ctx.model, ctx.train, self.make_step(ctx, opt), batch_size=a.batch_size,
                           epochs=a.local_epochs, max_steps=a.local_steps, generator=ctx.generator,
                           lr_at=self.lr_at(ctx), on_step=ctx.on_step, amp=ctx.amp, shard=ctx.shard)

    def fit(self, ctx: ClientContext) -> FitResult:
        res = self.train(ctx)
        sent = get_params(ctx.model, ctx.travel_names)  # CPU float32, whatever device trained
        return FitResult(sent, len(ctx.train), {"train_loss": res.loss, "steps": res.steps,
                                               "compute_s": res.compute_seconds})

    def evaluate(self, ctx: ClientContext, data: EncodedSplit) -> dict[str, float]:
        return evaluate(ctx.model, data, amp=ctx.amp)


class ServerRule:
    """Server half. The default samples ``fraction_fit`` of the clients and
    averages what travels (FedAvg). Not called ``Strategy``: Flower has one, and in the
    Flower runtime both are in play (Flower's carries messages, this one decides)."""

    custom_aggregate: ClassVar[bool] = False
    """True when the rule's :meth:`aggregate` is its own, not the configured mean below: options
    that compute that mean another way (``run.secagg``'s secure sum) cannot stand in for it.
    Every rule that overrides ``aggregate`` sets it."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg

    def clients_per_round(self, num_clients: int) -> int:
        return min(num_clients, max(1, int(round(self.cfg.algorithm.fraction_fit * num_clients))))

    def sample_rate(self, num_clients: int) -> float:
        """The share of clients sampled each round (fraction_fit after rounding to whole
        clients): the sampling rate of the DP accountant."""
        return self.clients_per_round(num_clients) / num_clients

    def sample_clients(self, rnd: int, client_ids: list[str], rng: np.random.Generator) -> list[str]:
        k = self.clients_per_round(len(client_ids))
        if k >= len(client_ids):
            return list(client_ids)
        chosen = rng.choice(len(client_ids), size=k, replace=False)
        return [client_ids[i] for i in sorted(chosen)]

    def aggregate(self, rnd: int, global_params: Params, results: list[FitResult]) -> Params:
        """The configured rule over the accepted updates: FedAvg by default, optional
        norm clipping and a robust rule (``algorithm.aggregator``), or DP-FedAvg's
        clipped and noised mean when ``privacy.enabled``. Never modifies ``global_params``."""
        if not global_params:
            return global_params
        a, dp = self.cfg.algorithm, self.cfg.privacy
        updates = [r.params for r in results]
        m = self.cfg.model
        if m.client_lora_ranks or m.lora_aggregation == "stack":  # LoRA rules of their own (config: the mean only)
            top = m.lora_rank
            ranks = [min(max(int(r.metrics.get("lora_rank", top)), 1), top) for r in results]
            weights = [float(r.num_examples) if a.aggregation == "weighted" else 1.0 for r in results]
            if m.lora_aggregation == "stack":  # FLoRA: the products merged into the base weights
                from fedvl.algorithms.flora import fresh_factors, stack_merge

                fresh = fresh_factors(global_params, self.cfg.run.seed, rnd)
                return stack_merge(global_params, updates, ranks, weights, m.lora_alpha / top, fresh)
            from fedvl.algorithms.hetlora import rank_aware_mean

            return rank_aware_mean(updates, ranks, weights)
        if dp.enabled:
            # noise from (seed, round): the same in every runtime and after a resume
            gen = torch.Generator().manual_seed(derived_seed(self.cfg.run.seed, "dp-noise", rnd))
            return dp_mean(global_params, updates, dp.clip_norm, dp.noise_multiplier, gen)
        return aggregate_updates(global_params, updates, [r.num_examples for r in results],
                                 aggregator=a.aggregator, weighting=a.aggregation, trim_ratio=a.trim_ratio,
                                 krum_byzantine=a.krum_byzantine, krum_select=a.krum_select,
                                 clip_norm=a.clip_update_norm, clip_to_median=a.clip_to_median)

    def state_dict(self) -> dict:
        """JSON-serialisable server state carried across rounds, saved in every checkpoint.
        The built-in strategies keep none (all randomness is derived from (seed, round))."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")


@dataclass(frozen=True)
class Algorithm:
    """A registered (strategy, client update) pair and what its model needs.

    ``local_groups``: trainable parameter groups kept by each client and never
    sent ("*" = everything trainable: local-only training).
    ``pooled``: train one model on the union of the clients' data (centralized
    upper bound); evaluation stays per client.
    """

    name: str
    server: type
    """The server half: a :class:`ServerRule` (parameters) or a ``KTServerRule`` (knowledge)."""
    client: type
    """The client half: a :class:`ClientUpdate` (parameters) or a ``KTClient`` (knowledge)."""
    summary: str
    adapter_roles: tuple[str, ...] = ("shared",)
    trainable_roles: tuple[str, ...] = ("shared",)
    local_groups: frozenset[str] = frozenset()
    pooled: bool = False
    family: str = "parameters"
    """The registered name of its exchange family, which decides what travels and so every part of
    a run around the round (:func:`fedvl.rounds.family.family_of` gives the object): ``parameters``
    (the global travelling parameters down, trained ones up: :mod:`fedvl.finetune.family`) or
    ``knowledge`` (a synthetic set down, logits and prototypes up: :mod:`fedvl.fedmmkt.family`)."""
    check: Callable[[ExperimentConfig], None] | None = None
    """The algorithm's own option checks (raise ConfigError), run when a config loads."""


_REGISTRY: dict[str, Algorithm] = {}


def register(algo: Algorithm) -> Algorithm:
    if algo.name in _REGISTRY:
        raise ValueError(f"algorithm {algo.name!r} registered twice")
    _REGISTRY[algo.name] = algo
    return algo


def registry() -> dict[str, Algorithm]:
    return _REGISTRY
