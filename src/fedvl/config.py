"""Load an experiment's configuration and check it across subsystems.

The options themselves (typed sections, YAML and ``key=value`` parsing) are
:mod:`fedvl.schema`; this module adds what needs the other layers: the
algorithm registry, the devices, the benchmarks' vocabularies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedvl.schema import ConfigError, ExperimentConfig, _apply, _check_numbers, _load, _short


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Cross-field checks that types alone cannot express."""
    from fedvl.algorithms import available_algorithms, registry  # late: registry imports torch

    # first: NaN fails every comparison below, and each option's own range is the clearer reason
    _check_numbers(cfg, "")
    checks = [
        (cfg.algorithm.local_epochs >= 1 or cfg.algorithm.local_steps >= 1, "set algorithm.local_epochs or algorithm.local_steps >= 1"),
        (cfg.model.base != "vl" or cfg.model.name in ("default", "tiny"),
         f"model.base=vl applies to the default and tiny models; model.name={cfg.model.name} is a pretrained "
         "vision-language checkpoint already (use model.base=auto)"),
        (cfg.model.base != "vl" or cfg.model.name != "tiny" or bool(cfg.model.base_weights),
         "model.base=vl with the tiny model needs model.base_weights (a base made by `fedvl pretrain vl model=tiny`)"),
        (not cfg.model.base_weights or cfg.model.base == "vl" or (cfg.model.base == "auto" and cfg.model.name == "default"),
         "model.base_weights is set but the model has no VL base (set model.base=vl)"),
        *((all(g in ("connector", "head") for g in getattr(cfg.algorithm, key)),
           f"algorithm.{key} may list connector and/or head only") for key in ("also_travel", "keep_local")),
        (not set(cfg.algorithm.keep_local) & set(cfg.algorithm.also_travel),
         "algorithm.keep_local and algorithm.also_travel name the same group"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    from fedvl.models.adapters import check_lora_targets

    if cfg.model.client_lora_ranks:
        _check_client_ranks(cfg)
    if cfg.model.name == "hf-vlm":
        _check_generative(cfg)
    else:
        check_lora_targets("model.lora_targets", cfg.model.lora_targets, "clip" if cfg.model.name == "clip" else "bert")
    for key, names in (("algorithm.also_travel", cfg.algorithm.also_travel),
                       ("algorithm.keep_local", cfg.algorithm.keep_local), ("run.trackers", cfg.run.trackers),
                       ("t2i.lora_targets", cfg.t2i.lora_targets)):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"{key} names {', '.join(twice)} twice; give each once")
    _check_devices(cfg)
    algo = registry().get(cfg.algorithm.name)
    if algo is not None and algo.check is not None:
        algo.check(cfg)
    if algo is not None and algo.exchange == "knowledge":  # its clients and data are its own sections
        return cfg
    _check_reliability(cfg)
    from fedvl.data.world import DOMAINS, FUNCTIONS, SCENES, TASKS

    if cfg.data.cycle_variants and cfg.data.partition != "natural":
        raise ConfigError("data.cycle_variants needs data.partition=natural (the partitioners re-split pooled data)")
    if cfg.data.benchmark == "domain" and len(cfg.data.domains) < cfg.data.num_clients and \
            not cfg.data.cycle_variants:
        raise ConfigError(
            f"data.domains lists {len(cfg.data.domains)} domains for {cfg.data.num_clients} clients; give one per "
            "client (or data.cycle_variants=true)"
        )
    # Function / Scene give each client one function / composition, so they cap the client count.
    per_client = {"function": ("question functions", FUNCTIONS), "scene": ("scene compositions", SCENES),
                  "task": ("tasks (vqa, itm, entail)", TASKS)}
    if cfg.data.benchmark in per_client:
        what, kinds = per_client[cfg.data.benchmark]
        if cfg.data.num_clients > len(kinds) and not cfg.data.cycle_variants:
            raise ConfigError(
                f"data.benchmark={cfg.data.benchmark} has {len(kinds)} {what}, one per client: "
                f"data.num_clients must be <= {len(kinds)}, got {cfg.data.num_clients} (or data.cycle_variants=true)"
            )
    for d in cfg.data.domains:
        if d not in DOMAINS:
            raise ConfigError(f"data.domains: unknown domain {_short(d)} (known: {', '.join(DOMAINS)})")
    for key in ("function_domain", "scene_domain", "task_domain"):
        if getattr(cfg.data, key) not in DOMAINS:
            raise ConfigError(f"data.{key}: unknown domain {_short(getattr(cfg.data, key))} "
                              f"(known: {', '.join(DOMAINS)})")
    if cfg.data.benchmark == "real":
        _validate_real(cfg)
    if cfg.model.name in ("vilt", "clip", "blip") and cfg.model.peft == "prompt":
        raise ConfigError(f"model.peft=prompt is built for the default model only, not model.name={cfg.model.name}")
    if cfg.algorithm.name not in available_algorithms():
        raise ConfigError(
            f"unknown algorithm '{cfg.algorithm.name}' (available: {', '.join(available_algorithms())})"
        )
    if cfg.data.benchmark == "task" and cfg.data.partition != "natural":
        raise ConfigError(
            f"data.partition={cfg.data.partition} re-splits pooled data, which is undefined on data.benchmark=task "
            "(every client has its own task and label space); use data.partition=natural"
        )
    return cfg


def _check_client_ranks(cfg: ExperimentConfig) -> None:
    """model.client_lora_ranks: one rank per client, each within the model's rank, under a plain mean."""
    ranks, m = cfg.model.client_lora_ranks, cfg.model
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


def _check_generative(cfg: ExperimentConfig) -> None:
    """model.name=hf-vlm: what a generative checkpoint can do (fedvl.models.vlm)."""
    from fedvl.models.vlm import lora_targets

    m = cfg.model
    if not m.checkpoint:
        raise ConfigError("model.name=hf-vlm needs model.checkpoint (a local checkpoint directory, or a repo id in "
                          "the local Hugging Face cache)")
    if m.peft not in ("lora", "adapter", "full", "bitfit", "layernorm"):
        raise ConfigError(f"model.peft={m.peft} is not available with model.name=hf-vlm "
                          "(lora, adapter, full, bitfit, layernorm): a generative model has no answer head")
    lora_targets(m)
    if len(set(m.lora_targets)) != len(m.lora_targets):
        raise ConfigError(f"model.lora_targets names a layer twice: {','.join(m.lora_targets)}")
    if cfg.data.benchmark == "task":
        raise ConfigError("data.benchmark=task needs one answer head per task; use it with a classifier model "
                          "(model.name=default, tiny, vilt, clip, blip)")


def _check_devices(cfg: ExperimentConfig) -> None:
    """run.device / precision / trackers / Flower resources. The device must exist here, except on a
    deployment's server (run.runtime=flower-deploy), which never trains: its nodes pick their own."""
    from fedvl.engine.device import DeviceError, check_precision, check_spec, resolve_device

    r = cfg.run
    try:
        if r.runtime == "flower-deploy":
            check_spec(r.device)
        else:
            check_precision(r.precision, resolve_device(r.device))
    except DeviceError as e:
        raise ConfigError(str(e)) from None
    for t in r.trackers:
        if t not in ("tensorboard", "mlflow"):
            raise ConfigError(f"run.trackers: unknown tracker {_short(t)} (known: tensorboard, mlflow)")
    gpus = r.flower_gpus_per_client
    if gpus > 1 and gpus % 1:
        raise ConfigError(f"run.flower_gpus_per_client must be a fraction of one GPU or a whole number of GPUs, "
                          f"got {gpus}")
    if r.client_procs > 1:
        _check_client_procs(cfg)


def _check_client_procs(cfg: ExperimentConfig) -> None:
    """run.client_procs > 1: where one client's data-parallel training (fedvl.finetune.procs) can run."""
    from fedvl.algorithms import exchange_of
    from fedvl.engine.device import DeviceError, rank_devices, resolve_device

    r = cfg.run
    if exchange_of(cfg.algorithm.name) == "knowledge":
        raise ConfigError(f"run.client_procs splits one client's fine-tuning; algorithm.name={cfg.algorithm.name} "
                          "(knowledge transfer) trains its own task models: leave run.client_procs=1")
    if r.runtime == "flower-sim" and r.flower_backend == "ray":
        raise ConfigError("run.client_procs needs the client to train in a fedvl process: with "
                          "run.flower_backend=ray Ray places the clients (use run.flower_gpus_per_client there)")
    if r.runtime != "flower-deploy":  # a deployment's nodes choose their own devices (fedvl join --device)
        try:
            rank_devices(resolve_device(r.device), r.client_procs)
        except DeviceError as e:
            raise ConfigError(str(e)) from None


def _validate_real(cfg: ExperimentConfig) -> None:
    from fedvl.algorithms import available_algorithms, get_algorithm

    if not cfg.data.root:
        raise ConfigError("data.benchmark=real needs data.root=<folder holding the datasets> (see docs/datasets.md)")
    if not cfg.data.clients:
        raise ConfigError("data.benchmark=real needs data.clients (one source per client, e.g. aqua,gqa)")
    if cfg.data.partition != "natural":
        raise ConfigError("data.benchmark=real keeps every source as one client: use data.partition=natural")
    if cfg.data.vocab_scope == "client" and cfg.algorithm.name in available_algorithms() \
            and get_algorithm(cfg.algorithm.name).pooled:
        raise ConfigError(f"algorithm {cfg.algorithm.name} pools all clients' data, but with data.vocab_scope=client "
                          "every client's labels index its own vocabulary; set data.vocab_scope=shared")


def _check_reliability(cfg: ExperimentConfig) -> None:
    """Robust aggregation, attack and privacy options: each component checks its own."""
    from fedvl.algorithms import aggregate, attacks, available_algorithms, get_algorithm, privacy

    aggregate.check_options(cfg, pooled=cfg.algorithm.name in available_algorithms()
                            and get_algorithm(cfg.algorithm.name).pooled)
    attacks.check_options(cfg)
    privacy.check_options(cfg)
    if cfg.run.secagg:
        _check_secagg(cfg)


def _check_secagg(cfg: ExperimentConfig) -> None:
    """SecAgg+ computes one secure sum: only a (weighted) mean of what every client sends fits it."""
    from fedvl.algorithms import available_algorithms, get_algorithm

    a, r = cfg.algorithm, cfg.run
    if r.runtime == "simulator":
        raise ConfigError("run.secagg needs a Flower runtime (run.runtime=flower-sim, or fedvl serve / fedvl join): "
                          "the in-process simulator has no network to hide the updates from")
    if a.aggregator != "mean" or a.clip_update_norm > 0 or a.clip_to_median or cfg.privacy.enabled:
        raise ConfigError("run.secagg gives the server only the sum of the updates: it needs algorithm.aggregator=mean "
                          "without algorithm.clip_update_norm, algorithm.clip_to_median or privacy.enabled, which "
                          "all need every client's update")
    if a.name in available_algorithms():
        algo = get_algorithm(a.name)
        if algo.pooled or algo.server.custom_aggregate:
            raise ConfigError(f"run.secagg needs an algorithm whose server step is a weighted mean (fedavg, fedprox, "
                              f"feddat); {a.name} aggregates differently")
    if r.transport_dtype != "float32":
        raise ConfigError("run.secagg sends masked 32-bit integers: leave run.transport_dtype=float32")
    per_round = min(cfg.data.num_clients, max(1, round(a.fraction_fit * cfg.data.num_clients)))
    shares = r.secagg_shares or per_round
    threshold = r.secagg_threshold or shares // 2 + 1
    if per_round < 2:
        raise ConfigError(f"run.secagg needs at least 2 clients per round, got {per_round}")
    if per_round > 1000:
        raise ConfigError(f"run.secagg: {per_round} clients per round would overflow SecAgg+'s 32-bit sum (max 1000)")
    if shares > per_round or (shares < per_round and (shares < 3 or shares % 2 == 0)):
        raise ConfigError(f"run.secagg_shares must be 0 (every client) or odd, >= 3 and <= the {per_round} clients "
                          f"per round, got {r.secagg_shares}")
    if not 2 <= threshold <= shares:
        raise ConfigError(f"run.secagg_threshold must be in 2..{shares} (the shares of each client's secrets; "
                          f"{per_round} clients per round), got {threshold}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Defaults <- YAML file (if given) <- ``key=value`` overrides, then validate."""
    sections = "sections (model, data, algorithm, run, attack, privacy, t2i, fedmmkt)"
    return validate(_load(ExperimentConfig(), path, overrides, sections))


def load_config_dict(data: dict[str, Any]) -> ExperimentConfig:
    """A config from an already-parsed mapping (e.g. the YAML text a Flower run carries)."""
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping of sections (model, data, algorithm, run)")
    cfg = ExperimentConfig()
    _apply(cfg, data, "", from_text=False)
    return validate(cfg)


def used_sections(cfg: ExperimentConfig) -> set[str]:
    """The sections a run reads: the knowledge exchange (the FedMMKT family) has its own clients,
    data and models (``t2i``, ``fedmmkt``); the parameter exchange reads ``model``, ``data``,
    ``attack`` and ``privacy`` instead. Both read ``algorithm`` and ``run``."""
    from fedvl.algorithms import exchange_of

    if exchange_of(cfg.algorithm.name) == "knowledge":
        return {"algorithm", "run", "t2i", "fedmmkt"}
    return {"model", "data", "algorithm", "run", "attack", "privacy"}


def run_config_text(cfg: ExperimentConfig) -> str:
    """A run's ``config.yaml``: the sections it uses, and any other section only when it differs
    from its defaults, so the file still loads back to exactly ``cfg`` (``--resume`` and
    ``compare`` compare the loaded config with the one a run was made with)."""
    full, default = cfg.to_dict(), ExperimentConfig().to_dict()
    used = used_sections(cfg)
    return yaml.safe_dump({k: v for k, v in full.items() if k in used or v != default[k]}, sort_keys=False)
