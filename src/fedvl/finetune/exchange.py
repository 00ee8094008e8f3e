"""The parameter exchange (the fine-tuning family: FedAvg, FedProx, FedDAT, local, centralized):
the global travelling parameters go down, each client's trained travelling parameters come back.

:class:`ParameterServer` is the server side of :func:`fedvl.rounds.loop.run_rounds` and
:class:`ParameterNode` the client side of the clients one process holds. The work itself is
:func:`client_fit` / :func:`server_aggregate` / :func:`client_evaluate` below, which every
transport shares.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedvl.algorithms.aggregate import Params, UpdateRejected, global_norm, validate_update
from fedvl.algorithms.attacks import attack_update
from fedvl.algorithms.base import ClientContext, FitResult
from fedvl.algorithms.hetlora import client_rank, limited_rank
from fedvl.algorithms.server_opt import server_optimizer
from fedvl.models.params import get_params, set_params
from fedvl.rounds.checkpoint import commit_round, resume_from
from fedvl.finetune.federation import Federation, to_wire, transport_dtype
from fedvl.rounds.state import ClientStateStore
from fedvl.schema import ExperimentConfig
from fedvl.seeding import derived_seed


def sent_up(fed: Federation, global_params: Params) -> Params:
    """The part of the global parameters a client sends back: all of it unless some only go down
    (the base weights under ``model.lora_aggregation=stack``)."""
    return {k: global_params[k] for k in fed.travel} if fed.down_only else global_params


def load_client(fed: Federation, store: ClientStateStore, cid: str, global_params: Params) -> None:
    """Put the global travelling parameters and this client's own state into the model."""
    set_params(fed.model, global_params)
    state = store.load(cid) if fed.local else None
    set_params(fed.model, state if state is not None else fed.init_local)


def fit_context(cfg: ExperimentConfig, model: torch.nn.Module, cid: str, rnd: int, data, global_params: Params,
                travel: list[str], trainable: list[str], on_step, amp, shard=None) -> ClientContext:
    """A client's training context, with the randomness derived from (seed, round, client): seeds
    torch's global generator too (dropout masks). Every process of a client's fit builds the same."""
    gen = torch.Generator().manual_seed(derived_seed(cfg.run.seed, "batches", rnd, cid))
    torch.manual_seed(derived_seed(cfg.run.seed, "torch", rnd, cid))  # dropout masks
    return ClientContext(cid, model, data, cfg, rnd, global_params, travel, trainable, gen, on_step, amp,
                         shard=shard)


def client_fit(fed: Federation, store: ClientStateStore, cid: str, rnd: int, global_params: Params,
               on_step=None) -> FitResult:
    """The client half of a round, as every runtime runs it: load the global
    parameters and this client's own state, train with randomness derived from
    (seed, round, client), keep the local state, return what travels."""
    cfg = fed.cfg
    load_client(fed, store, cid, global_params)
    ctx = fit_context(cfg, fed.model, cid, rnd, fed.train[cid], global_params, fed.travel, fed.trainable,
                      on_step, fed.amp)
    rank = client_rank(cfg, fed.client_ids, cid)
    with limited_rank(fed.model, fed.trainable, rank) if rank else contextlib.nullcontext():
        if cfg.run.client_procs > 1:  # the same fit on replicas in worker processes (fedvl.finetune.procs)
            from fedvl.finetune.procs import client_procs

            res = client_procs(fed).fit(ctx, rank)
        else:
            res = fed.client.fit(ctx)
    if rank:
        res.metrics["lora_rank"] = float(rank)  # the server averages each rank component over its holders
    store.save(cid, get_params(fed.model, fed.local))
    if cid in fed.attackers and fed.travel:
        # the attacker trains honestly, then sends a poisoned update instead (experiments only)
        gen = torch.Generator().manual_seed(derived_seed(cfg.run.seed, "attack", rnd, cid))
        res.params = attack_update(sent_up(fed, global_params), res.params, cfg.attack.kind, cfg.attack.scale, gen)
        res.metrics["attacker"] = 1.0
    res.params = to_wire(res.params, cfg)  # half-precision transport: what leaves the client is already cast
    return res


def client_evaluate(fed: Federation, store: ClientStateStore, cid: str, global_params: Params) -> dict[str, float]:
    """Personalised evaluation of one client on its own test split."""
    # pooled (centralized) training has no per-client state: everyone uses the one model
    load_client(fed, store, "pooled" if fed.algo.pooled else cid, global_params)
    ctx = ClientContext(cid, fed.model, fed.test[cid], fed.cfg, 0, global_params, fed.travel, fed.trainable,
                        torch.Generator(), amp=fed.amp)
    rank = None if fed.algo.pooled else client_rank(fed.cfg, fed.client_ids, cid)
    with limited_rank(fed.model, fed.trainable, rank) if rank else contextlib.nullcontext():
        return fed.client.evaluate(ctx, fed.test[cid])


def sample_round(fed: Federation, rnd: int) -> list[str]:
    rng = np.random.default_rng(derived_seed(fed.cfg.run.seed, "sample", rnd))
    ids = ["pooled"] if fed.algo.pooled else fed.client_ids
    return fed.server.sample_clients(rnd, ids, rng)


def check_result(fed: Federation, cid: str, res: Any, global_params: Params,
                 reference_norm: float | None = None) -> None:
    """Raise UpdateRejected unless ``res`` is a well-formed FitResult whose update passes
    :func:`validate_update` (with the client's data size as the sample-count bound,
    since the simulator knows it) and whose metrics are plain numbers."""
    if not isinstance(res, FitResult):
        raise UpdateRejected(f"not a FitResult but {type(res).__name__}")
    known = fed.train.get(cid)
    # an update arrives in the transport dtype; validate it against the global model in that dtype
    validate_update(to_wire(sent_up(fed, global_params), fed.cfg), res.params, res.num_examples,
                    max_update_norm=fed.cfg.algorithm.max_update_norm, reference_norm=reference_norm,
                    max_examples=len(known) if known is not None else None)
    if not isinstance(res.metrics, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in res.metrics.items()):
        raise UpdateRejected("metrics must map names to numbers")


def _mean_of(train_metrics: dict[str, dict[str, float]], key: str) -> float:
    values = [float(m[key]) for m in train_metrics.values() if key in m and math.isfinite(m[key])]
    return float(np.mean(values)) if values else float("nan")


def server_aggregate(fed: Federation, rnd: int, global_params: Params,
                     results: dict[str, FitResult]) -> tuple[Params, dict[str, Any]]:
    """The server half of a round: validate every update, aggregate the accepted ones.
    Returns the new global parameters and the round's training record. A rejected
    update is logged with its reason (``record["rejected"]``) and the round goes on
    with the others; ``global_params`` itself is never modified."""
    accepted: list[FitResult] = []
    train_metrics: dict[str, dict[str, float]] = {}
    rejected: dict[str, str] = {}
    # one global model per round: its norm (the scale of the update-norm check) is computed once
    ref_norm = global_norm(to_wire(sent_up(fed, global_params), fed.cfg)) \
        if fed.cfg.algorithm.max_update_norm > 0 else None
    for cid, res in results.items():
        try:
            check_result(fed, cid, res, global_params, ref_norm)
        except UpdateRejected as e:
            rejected[cid] = str(e)
            print(f"fedvl: round {rnd}: rejected the update of {cid}: {e}", file=sys.stderr)
            continue
        if transport_dtype(fed.cfg) != torch.float32:  # aggregate in the global model's precision
            res.params = {k: v.to(global_params[k].dtype) for k, v in res.params.items()}
        accepted.append(res)
        train_metrics[cid] = dict(res.metrics, n=res.num_examples)
    if not accepted:
        raise RuntimeError(f"round {rnd}: every client update was rejected ({rejected}); stopping")
    global_params = fed.server.aggregate(rnd, global_params, accepted)
    record: dict[str, Any] = {"round": rnd, "sampled": list(results), "train": train_metrics}
    if rejected:
        record["rejected"] = rejected
    record["train_loss"] = _mean_of(train_metrics, "train_loss")
    record["compute_s"] = float(sum(m.get("compute_s", 0.0) for m in train_metrics.values()))
    dp = fed.cfg.privacy
    if dp.enabled and fed.travel:
        from fedvl.algorithms.privacy import epsilon_spent

        # every client of the federation, also on a Flower server that holds no client data
        rate = fed.server.sample_rate(1 if fed.algo.pooled else len(fed.client_ids))
        record["privacy"] = {"epsilon": epsilon_spent(dp.noise_multiplier, rate, rnd, dp.delta), "delta": dp.delta,
                             "sample_rate": rate}
    return global_params, record


def wants_eval(cfg: ExperimentConfig, rnd: int) -> bool:
    return rnd % cfg.run.eval_every == 0 or rnd == cfg.algorithm.rounds


def add_eval(record: dict[str, Any], evals: dict[str, dict[str, float]]) -> None:
    record["eval"] = evals
    keys = [k for k in next(iter(evals.values())) if k != "n"]
    # unweighted mean over clients: each client counts once, as in FedDAT's tables
    record["avg"] = {k: float(np.mean([m[k] for m in evals.values()])) for k in keys}


def eval_client_ids(fed: Federation) -> list[str]:
    """The clients every evaluation covers: all, or ``run.eval_clients`` of them drawn once from
    the seed (the same set every round, in partition order, so rounds are comparable)."""
    k = fed.cfg.run.eval_clients
    if not k or k >= len(fed.client_ids):
        return list(fed.client_ids)
    rng = np.random.default_rng(derived_seed(fed.cfg.run.seed, "eval-clients"))
    return [fed.client_ids[i] for i in sorted(rng.choice(len(fed.client_ids), size=k, replace=False))]


def evaluate_all(fed: Federation, store: ClientStateStore, global_params: Params) -> dict[str, dict[str, float]]:
    return {cid: client_evaluate(fed, store, cid, global_params) for cid in eval_client_ids(fed) if cid in fed.test}


@dataclass
class SecureSum:
    """What a transport under SecAgg+ hands the server instead of the updates: their aggregate only,
    already checked, and the round's record (:mod:`fedvl.transport.secagg`)."""

    params: Params
    record: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.results)


class ParameterServer:
    """Samples with the algorithm's :class:`ServerRule`, sends the global travelling parameters,
    validates and aggregates what comes back, evaluates every client on its own test split.

    ``store``: the clients' state folder of this run when the server can see it (in-process and
    Flower simulation), so each round's checkpoint holds it; ``None`` in a deployment, whose
    clients keep their state on their own nodes (no checkpoints then)."""

    def __init__(self, fed: Federation, store: ClientStateStore | None = None, run_dir: Path | None = None,
                 global_params: Params | None = None, config_digest: str | None = None):
        self.fed, self.store, self.run_dir, self.config_digest = fed, store, run_dir, config_digest
        self.rounds = fed.cfg.algorithm.rounds
        self.global_params = global_params if global_params is not None else get_params(fed.model, fed.down)
        # algorithm.server_opt: a step from the global model towards each round's aggregate
        self.server_opt = server_optimizer(fed.cfg, fed.algo.pooled)

    def resume(self, history, warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> int:
        """Continue from the newest good checkpoint of ``run_dir`` (:func:`resume_from`): the clients'
        states, the round records, the global parameters, the rule's state, the server optimizer's
        state and torch's RNG come back. Returns the round to start at."""
        fed = self.fed

        def restore(ckpt) -> None:
            self.global_params = ckpt.global_params
            fed.server.load_state_dict(ckpt.strategy_state)
            if self.server_opt is not None and not self.server_opt.load_state_tensors(ckpt.server_tensors, fed.travel):
                warn(f"fedvl: warning: the checkpoint holds no {fed.cfg.algorithm.server_opt} state; it starts afresh")

        return resume_from(self.run_dir, fed.down, self.store, history, self.rounds, restore, warn)

    def sample(self, rnd: int) -> list[str]:
        return sample_round(self.fed, rnd)

    def configure_fit(self, rnd: int, sampled: list[str], progress) -> Params:
        return self.global_params

    def aggregate_fit(self, rnd: int, sampled: list[str], replies: Any, failed: dict[str, str],
                      progress) -> dict[str, Any]:
        if isinstance(replies, SecureSum):  # the transport aggregated already: the server sees the sum only
            aggregate, record = replies.params, replies.record
        else:  # in sampling order, whatever order the transport delivered them in (float sums depend on it)
            replies = {cid: replies[cid] for cid in sampled if cid in replies}
            aggregate, record = server_aggregate(self.fed, rnd, self.global_params, replies)
        self.global_params = aggregate if self.server_opt is None else self.server_opt.step(self.global_params,
                                                                                            aggregate)
        record["sampled"] = sampled
        if failed:
            record["dropped"] = failed
            if progress:
                progress.status(f"round {rnd}: {len(failed)} client(s) dropped, continuing with "
                                f"{len(record['train'])}: {failed}")
        return record

    def eval_targets(self, rnd: int) -> list[str]:
        return eval_client_ids(self.fed) if wants_eval(self.fed.cfg, rnd) else []

    def configure_evaluate(self, rnd: int) -> Params:
        return self.global_params

    def aggregate_evaluate(self, rnd: int, record: dict[str, Any], scores: dict[str, dict[str, float]],
                           failed: dict[str, str], progress) -> None:
        if scores:
            add_eval(record, scores)
        if failed:
            record["eval_dropped"] = failed

    def commit(self, rnd: int, history) -> None:
        if self.store is None or self.run_dir is None:
            return
        commit_round(self.run_dir, rnd, self.global_params, self.store, history.rounds,
                     self.fed.server.state_dict(), self.fed.cfg.run.keep_checkpoints,
                     config_digest=self.config_digest,
                     server_tensors=self.server_opt.state_tensors() if self.server_opt is not None else None)


class ParameterNode:
    """The client side: loads the global parameters and a client's own state into the one model
    instance, trains or evaluates, keeps the client's state in ``store``."""

    def __init__(self, fed: Federation, store: ClientStateStore):
        self.fed, self.store = fed, store

    def fit(self, cid: str, rnd: int, down: Params, on_step=None):
        return client_fit(self.fed, self.store.at(rnd, fit=True), cid, rnd, down, on_step)

    def evaluate(self, cid: str, rnd: int, down: Params) -> dict[str, float]:
        return client_evaluate(self.fed, self.store.at(rnd, fit=False), cid, down)

    def holds(self, cid: str) -> bool:
        return cid in self.fed.test
