"""In-process simulator: clients run one after another in one process.

One model instance serves every client: before a client runs, the runtime
loads the global travelling parameters and that client's own local state
(from disk) into it. Memory therefore does not grow with the number of
clients. Randomness is derived from (seed, round, client), so a run is
deterministic and every round sees a new batch order.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedvl.algorithms import get_algorithm
from fedvl.algorithms.aggregate import Params, UpdateRejected, global_norm, validate_update
from fedvl.algorithms.attacks import attack_update, choose_attackers
from fedvl.algorithms.base import Algorithm, ClientContext, ClientUpdate, FitResult, ServerRule
from fedvl.schema import ConfigError, ExperimentConfig
from fedvl.data.benchmarks import (NUM_ANSWERS, benchmark_client_ids, benchmark_tasks, build_benchmark,
                                   make_client_split)
from fedvl.data.features import EncodedSplit, encode_split
from fedvl.data.lazy import LazyClientData
from fedvl.data.real import build_real_benchmark
from fedvl.data.real.encode import encode_real_split
from fedvl.data.world import TASKS
from fedvl.engine.device import FP32_CPU, Amp, DeviceError, amp_for
from fedvl.models.backbones import build_model, load_tokenizer
from fedvl.models.params import (count, get_params, names_in_groups, nbytes, param_group, set_params, set_trainable,
                                 trainable_names)
from fedvl.runtime.checkpoint import commit_round, latest_checkpoint
from fedvl.runtime.state import ClientStateStore
from fedvl.seeding import derived_seed


@dataclass
class Federation:
    """Everything built once per run: model, algorithm halves, encoded client data."""

    cfg: ExperimentConfig
    algo: Algorithm
    model: torch.nn.Module
    server: ServerRule
    client: ClientUpdate
    train: Mapping[str, EncodedSplit]  # the clients that train (one "pooled" client if centralized)
    test: Mapping[str, EncodedSplit]  # every client's own test split (both may be LazyClientData)
    trainable: list[str]
    travel: list[str]
    local: list[str]
    init_local: Params
    client_ids: list[str]  # every client of the federation, in partition order (also those not built here)
    attackers: list[str] = field(default_factory=list)
    """Clients that send poisoned updates (``attack`` section; experiments only)."""
    amp: Amp = FP32_CPU
    """Where the model computes and in which precision (run.device, run.precision)."""

    def param_report(self) -> dict[str, Any]:
        total = count(self.model)
        trainable = count(self.model, self.trainable)
        travel = count(self.model, self.travel)
        base = getattr(self.model, "base_report", {}) or {}
        return {"total_params": total, "trainable_params": trainable, "travel_params": travel,
                "trainable_frac": trainable / total, "travel_frac": travel / total,
                # which foundation the run fine-tuned: the VL base's key, or the raw glue
                "base": "vl" if base else "raw", "base_key": base.get("key", ""),
                "trained_groups": sorted({param_group(n).split(".")[0] for n in self.trainable}),
                "bytes_up_per_client_round": nbytes(to_wire(get_params(self.model, self.travel), self.cfg))}


def build_federation(cfg: ExperimentConfig, status=print, only: list[int] | None = None) -> Federation:
    """Generate the benchmark, build the model and decide what trains, stays and travels.

    The model gets one answer head per task present among the clients (only
    ``head.vqa`` except on the Task benchmark). On ``data.benchmark=task`` every
    head is client-local for every algorithm: each client trains only its own
    task's head, and the other clients have other label spaces, so averaging a
    head with clients that never train it would only dilute it. Adapters / LoRA
    / prompts / connector travel as the algorithm says. ``data.benchmark=real``
    reads the clients from disk instead (:mod:`fedvl.data.real`); with
    ``data.vocab_scope=client`` each has its own answer vocabulary, so the head
    stays local there too.

    ``only``: encode the data of these partitions only (a Flower node holds one
    partition; the Flower server holds none); ``None`` = every client.
    """
    torch.set_num_threads(cfg.run.threads)
    try:  # a server that holds no client data never trains: it stays on the CPU
        amp = FP32_CPU if only == [] else amp_for(cfg.run.device, cfg.run.precision)
    except DeviceError as e:
        raise ConfigError(str(e)) from None
    algo = get_algorithm(cfg.algorithm.name)
    lazy = cfg.data.benchmark != "real" and cfg.data.partition == "natural" and not algo.pooled
    if cfg.data.benchmark == "real":
        # real datasets from disk (fedvl.data.real): one source per client, answers from each one's files
        status(f"reading {len(cfg.data.clients)} real datasets from {cfg.data.root}")
        clients = build_real_benchmark(cfg.data, cfg.run.seed)
        num_answers = max(len(c.train.vocab) for c in clients)
        enc_fn = partial(encode_real_split, image_size=cfg.data.image_size)
        client_ids, tasks_present = [c.client_id for c in clients], {c.train.task for c in clients}
    elif lazy:
        # each client's data is made when first used (fedvl.data.lazy): memory stays flat in the client count
        status(f"the {cfg.data.benchmark} benchmark: {cfg.data.num_clients} clients, data made on first use")
        num_answers, enc_fn = NUM_ANSWERS, encode_split
        client_ids, tasks_present = benchmark_client_ids(cfg.data), benchmark_tasks(cfg.data)
    else:
        status(f"generating the {cfg.data.benchmark} benchmark ({cfg.data.num_clients} clients)")
        clients = build_benchmark(cfg.data, cfg.run.seed)
        num_answers, enc_fn = NUM_ANSWERS, encode_split
        client_ids, tasks_present = [c.client_id for c in clients], {c.train.task for c in clients}
    status(f"building the {cfg.model.name} model ({cfg.model.peft})")
    tasks = tuple(t for t in TASKS if t in tasks_present)
    model = build_model(cfg.model, num_answers, cfg.data.image_size, cfg.run.seed, roles=algo.adapter_roles,
                        tasks=tasks).to(amp.device)  # built on the CPU (same init everywhere), then moved
    trainable = trainable_names(model, cfg.model.peft, algo.trainable_roles)
    set_trainable(model, trainable)
    local_groups = set(algo.local_groups)
    if cfg.data.benchmark == "task" or (cfg.data.benchmark == "real" and cfg.data.vocab_scope == "client"):
        # One task (and label space) per client: a head is trained by one client
        # only, so heads never travel (see the docstring). Same with real data
        # whose clients each have their own answer vocabulary.
        local_groups.add("head")
    if "*" not in local_groups:  # an experiment may share what the algorithm would keep (e.g. the connector)
        local_groups -= set(cfg.algorithm.also_travel)
        local_groups |= set(cfg.algorithm.keep_local)  # e.g. the paper's protocol: heads never travel
    local = trainable if "*" in local_groups else names_in_groups(trainable, local_groups)
    kept = set(local)
    travel = [n for n in trainable if n not in kept]
    if not travel and "*" not in local_groups and not algo.pooled:
        # e.g. model.peft=head with keep_local=connector,head: a federated run that would send nothing
        raise ConfigError(f"nothing travels: every group model.peft={cfg.model.peft} trains stays on the client "
                          f"({', '.join(sorted(local_groups))}); use algorithm.name=local for that")
    tokenizer = load_tokenizer(cfg.model)
    enc = lambda split: enc_fn(split, model, tokenizer, cfg.model.max_text_len, cfg.run.cache_dir)  # noqa: E731
    keep = client_ids if only is None else [client_ids[i] for i in only if 0 <= i < len(client_ids)]
    train: Mapping[str, EncodedSplit]
    test: Mapping[str, EncodedSplit]
    if lazy:
        index = {cid: k for k, cid in enumerate(client_ids)}
        made = lambda which: lambda cid: enc(make_client_split(cfg.data, cfg.run.seed, index[cid], which))  # noqa: E731
        train = LazyClientData(keep, made("train"), cfg.run.clients_in_memory)
        test = LazyClientData(keep, made("test"), cfg.run.clients_in_memory)
    else:
        status("encoding questions and vision features (cached)")
        built = [c for c in clients if c.client_id in set(keep)]
        train = {c.client_id: enc(c.train) for c in built}
        test = {c.client_id: enc(c.test) for c in built}
        if algo.pooled:
            train = {"pooled": EncodedSplit.concat(list(train.values()))}
    attackers = [] if cfg.attack.kind == "none" or algo.pooled else \
        choose_attackers(client_ids, cfg.attack.fraction, cfg.run.seed)
    return Federation(cfg, algo, model, algo.server(cfg), algo.client(cfg), train, test, trainable,
                      travel, local, get_params(model, local), client_ids, attackers, amp)


def load_client(fed: Federation, store: ClientStateStore, cid: str, global_params: Params) -> None:
    """Put the global travelling parameters and this client's own state into the model."""
    set_params(fed.model, global_params)
    state = store.load(cid) if fed.local else None
    set_params(fed.model, state if state is not None else fed.init_local)


def client_fit(fed: Federation, store: ClientStateStore, cid: str, rnd: int, global_params: Params,
               on_step=None) -> FitResult:
    """The client half of a round, as every runtime runs it: load the global
    parameters and this client's own state, train with randomness derived from
    (seed, round, client), keep the local state, return what travels."""
    cfg = fed.cfg
    load_client(fed, store, cid, global_params)
    gen = torch.Generator().manual_seed(derived_seed(cfg.run.seed, "batches", rnd, cid))
    torch.manual_seed(derived_seed(cfg.run.seed, "torch", rnd, cid))  # dropout masks
    ctx = ClientContext(cid, fed.model, fed.train[cid], cfg, rnd, global_params, fed.travel,
                        fed.trainable, gen, on_step, fed.amp)
    res = fed.client.fit(ctx)
    store.save(cid, get_params(fed.model, fed.local))
    if cid in fed.attackers and fed.travel:
        # the attacker trains honestly, then sends a poisoned update instead (experiments only)
        gen = torch.Generator().manual_seed(derived_seed(cfg.run.seed, "attack", rnd, cid))
        res.params = attack_update(global_params, res.params, cfg.attack.kind, cfg.attack.scale, gen)
        res.metrics["attacker"] = 1.0
    res.params = to_wire(res.params, cfg)  # half-precision transport: what leaves the client is already cast
    return res


def transport_dtype(cfg: ExperimentConfig) -> torch.dtype:
    return getattr(torch, cfg.run.transport_dtype)


def to_wire(params: Params, cfg: ExperimentConfig) -> Params:
    """Floating tensors in ``run.transport_dtype`` (unchanged objects at float32)."""
    wire = transport_dtype(cfg)
    if wire == torch.float32:
        return params
    return {k: v.to(wire) if v.is_floating_point() else v for k, v in params.items()}


def client_evaluate(fed: Federation, store: ClientStateStore, cid: str, global_params: Params) -> dict[str, float]:
    """Personalised evaluation of one client on its own test split."""
    # pooled (centralized) training has no per-client state: everyone uses the one model
    load_client(fed, store, "pooled" if fed.algo.pooled else cid, global_params)
    ctx = ClientContext(cid, fed.model, fed.test[cid], fed.cfg, 0, global_params, fed.travel, fed.trainable,
                        torch.Generator(), amp=fed.amp)
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
    validate_update(to_wire(global_params, fed.cfg), res.params, res.num_examples,
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
    ref_norm = global_norm(to_wire(global_params, fed.cfg)) if fed.cfg.algorithm.max_update_norm > 0 else None
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


def run_round(fed: Federation, store: ClientStateStore, rnd: int, global_params: Params,
              progress=None) -> tuple[Params, dict[str, Any]]:
    """One round: sample -> local updates -> validate -> aggregate -> evaluate."""
    t0 = time.perf_counter()
    sampled = sample_round(fed, rnd)
    results: dict[str, FitResult] = {}
    for i, cid in enumerate(sampled, 1):
        if progress:
            progress.client_start(rnd, cid, i, len(sampled))
        results[cid] = client_fit(fed, store, cid, rnd, global_params, progress.step if progress else None)
    if progress:
        progress.phase(f"round {rnd} · aggregating {len(results)} update(s)")
    global_params, record = server_aggregate(fed, rnd, global_params, results)
    if wants_eval(fed.cfg, rnd):
        if progress:
            progress.phase(f"round {rnd} · evaluating {len(eval_client_ids(fed))} client(s)")
        add_eval(record, evaluate_all(fed, store, global_params))
    record["time_s"] = time.perf_counter() - t0
    return global_params, record


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


def simulate(fed: Federation, run_dir: Path, history, progress=None, resume: bool = False,
             warn=lambda msg: print(msg, file=sys.stderr), config_digest: str | None = None) -> dict[str, Any]:
    """Run every round, committing a checkpoint after each (``runtime.checkpoint``).

    ``resume=True`` continues from the newest good checkpoint in ``run_dir``
    (damaged ones are reported with ``warn`` and skipped), puts the clients'
    states and the round records of that round back, and runs the rest; with
    the same config the result is the same as an uninterrupted run. ``config_digest``
    is recorded in every checkpoint, so a resume can tell an edited config."""
    store = ClientStateStore(run_dir / "client_states")
    global_params = get_params(fed.model, fed.travel)
    record: dict[str, Any] = {}
    start = 1
    if resume:
        ckpt = latest_checkpoint(run_dir, fed.travel, warn)
        store.restore(ckpt.path / "clients" if ckpt else None)
        history.reset(ckpt.history if ckpt else [])
        if ckpt is not None:
            global_params, start = ckpt.global_params, ckpt.round + 1
            fed.server.load_state_dict(ckpt.strategy_state)
            torch.set_rng_state(ckpt.rng_state)
            record = ckpt.history[-1]
            warn(f"fedvl: resuming from round {ckpt.round} of {fed.cfg.algorithm.rounds}")
        else:
            warn("fedvl: no complete round to resume from; starting at round 1")
    for rnd in range(start, fed.cfg.algorithm.rounds + 1):
        global_params, record = run_round(fed, store, rnd, global_params, progress)
        history.append(record)  # before the commit: a resume truncates metrics.jsonl to the checkpoint's records
        commit_round(run_dir, rnd, global_params, store, history.rounds, fed.server.state_dict(),
                     fed.cfg.run.keep_checkpoints, config_digest=config_digest)
        if progress and "eval" in record:
            progress.round_end(record)
    return record
