"""The parameter family's config checks (:meth:`fedvl.finetune.family.ParameterFamily.check`): its
data, the reliability options (robust aggregation, attacks, privacy, SecAgg+) and the algorithm's
name. The knowledge family's clients and data are its own sections, checked by its algorithms
(:mod:`fedvl.fedmmkt.validate`)."""

from __future__ import annotations

from fedvl.schema import ConfigError, ExperimentConfig, _short


def check_parameter_run(cfg: ExperimentConfig) -> None:
    """Cross-field checks of a parameter-family config, after the checks every config gets
    (:func:`fedvl.config.validate`)."""
    from fedvl.algorithms import available_algorithms

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
