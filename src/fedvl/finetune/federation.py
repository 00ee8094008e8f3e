"""What a run of the parameter exchange is built from (:func:`build_federation`): the benchmark's
clients, the one model instance, what trains, what stays on a client and what travels, the
algorithm's two halves. Every runtime builds it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from fedvl.algorithms import get_algorithm
from fedvl.algorithms.aggregate import Params
from fedvl.algorithms.attacks import choose_attackers
from fedvl.algorithms.base import Algorithm, ClientUpdate, ServerRule
from fedvl.algorithms.flora import merged_bases
from fedvl.data.benchmarks import NUM_ANSWERS, benchmark_client_ids, benchmark_tasks, build_benchmark, make_client_split
from fedvl.data.features import EncodedSplit, encode_split
from fedvl.data.lazy import LazyClientData
from fedvl.data.real import build_real_benchmark
from fedvl.data.real.encode import encode_real_split
from fedvl.data.world import TASKS
from fedvl.engine.device import FP32_CPU, Amp, DeviceError, amp_for
from fedvl.models.backbones import build_model, load_tokenizer
from fedvl.models.params import (
    count,
    get_params,
    names_in_groups,
    nbytes,
    param_group,
    set_trainable,
    trainable_names,
)
from fedvl.schema import ConfigError, ExperimentConfig


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
    procs: Any = None
    """``run.client_procs > 1``: the worker processes that train each client (:mod:`fedvl.finetune.procs`),
    started by the first fit; :meth:`close` stops them."""
    down_only: list[str] = field(default_factory=list)
    """Global parameters that go down with ``travel`` but never come back: the frozen base weights that
    ``model.lora_aggregation=stack`` merges the clients' LoRA products into (:mod:`fedvl.algorithms.flora`)."""

    @property
    def down(self) -> list[str]:
        """The global parameters: what the server holds, checkpoints and sends down each round."""
        return self.travel + self.down_only

    def close(self) -> None:
        """Stop what the federation started beside this process (the end of a run; safe to repeat)."""
        if self.procs is not None:
            self.procs.close()
            self.procs = None

    def param_report(self) -> dict[str, Any]:
        total = count(self.model)
        trainable = count(self.model, self.trainable)
        # a pooled-data run has no clients to send anything: its one model's "travel" set never leaves
        travel_names = [] if self.algo.pooled else self.travel
        travel = count(self.model, travel_names)
        base = getattr(self.model, "base_report", {}) or {}
        return {"total_params": total, "trainable_params": trainable, "travel_params": travel,
                "trainable_frac": trainable / total, "travel_frac": travel / total,
                # which foundation the run fine-tuned: the VL base's key, or the raw glue
                "base": "vl" if base else "raw", "base_key": base.get("key", ""),
                "trained_groups": sorted({param_group(n).split(".")[0] for n in self.trainable}),
                "bytes_up_per_client_round": nbytes(to_wire(get_params(self.model, travel_names), self.cfg)),
                # the global parameters go down as the server holds them (no transport cast)
                "bytes_down_per_client_round": nbytes(get_params(self.model, [] if self.algo.pooled else self.down))}


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
                        tasks=tasks, device=amp.device).to(amp.device)
    # (built on the CPU, the same init everywhere, then moved; a 4-bit base is loaded on its device)
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
    if cfg.model.name == "hf-vlm":  # answers are generated: the checkpoint's processor renders each turn
        from fedvl.data.vlm_encode import encode_real_generative, encode_split_generative

        tokenizer = model.processor
        enc_fn = partial(encode_real_generative, image_size=cfg.data.image_size) if cfg.data.benchmark == "real" \
            else encode_split_generative
    else:
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
            parts = list(train.values())
            train = {"pooled": type(parts[0]).concat(parts)}
    attackers = [] if cfg.attack.kind == "none" or algo.pooled else \
        choose_attackers(client_ids, cfg.attack.fraction, cfg.run.seed)
    # stacking (FLoRA) moves the global state into the LoRA-targeted base weights: they go down, frozen
    down_only = merged_bases(travel) if cfg.model.lora_aggregation == "stack" else []
    return Federation(cfg, algo, model, algo.server(cfg), algo.client(cfg), train, test, trainable,
                      travel, local, get_params(model, local), client_ids, attackers, amp, down_only=down_only)


def transport_dtype(cfg: ExperimentConfig) -> torch.dtype:
    return getattr(torch, cfg.run.transport_dtype)


def to_wire(params: Params, cfg: ExperimentConfig) -> Params:
    """Floating tensors in ``run.transport_dtype`` (unchanged objects at float32)."""
    wire = transport_dtype(cfg)
    if wire == torch.float32:
        return params
    return {k: v.to(wire) if v.is_floating_point() else v for k, v in params.items()}
