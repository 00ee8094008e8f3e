"""Load an experiment's configuration and check it across subsystems.

The options themselves (typed sections, YAML and ``key=value`` parsing) are
:mod:`fedvl.schema`; this module adds what needs the other layers: the
algorithm registry, the devices, and the checks of the algorithm's exchange family
(:meth:`fedvl.rounds.family.Family.check`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedvl.schema import ConfigError, ExperimentConfig, _apply, _check_numbers, _load, _short


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Cross-field checks that types alone cannot express."""
    from fedvl.algorithms import registry  # late: registry imports torch

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

    if cfg.model.client_lora_ranks or cfg.model.lora_aggregation != "zeropad":
        from fedvl.algorithms.hetlora import check_options as check_lora_aggregation

        check_lora_aggregation(cfg)
    if cfg.model.name == "hf-vlm":
        from fedvl.models.vlm import check_options as check_generative

        check_generative(cfg)
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
    from fedvl.rounds.family import family_of

    family_of(cfg.algorithm.name).check(cfg)  # e.g. the parameter family's data, aggregation and privacy options
    return cfg


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
    from fedvl.engine.device import DeviceError, rank_devices, resolve_device

    r = cfg.run  # (the knowledge family refuses it in its own check: fedvl.fedmmkt.family)
    if r.runtime == "flower-sim" and r.flower_backend == "ray":
        raise ConfigError("run.client_procs needs the client to train in a fedvl process: with "
                          "run.flower_backend=ray Ray places the clients (use run.flower_gpus_per_client there)")
    if r.runtime != "flower-deploy":  # a deployment's nodes choose their own devices (fedvl join --device)
        try:
            rank_devices(resolve_device(r.device), r.client_procs)
        except DeviceError as e:
            raise ConfigError(str(e)) from None


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
    """The sections a run reads: its exchange family's (:attr:`fedvl.rounds.family.Family.sections`).
    The knowledge family (FedMMKT) has its own clients, data and models (``t2i``, ``fedmmkt``); the
    parameter family reads ``model``, ``data``, ``attack`` and ``privacy`` instead. Both read
    ``algorithm`` and ``run``."""
    from fedvl.rounds.family import family_of

    return set(family_of(cfg.algorithm.name).sections)


def run_config_text(cfg: ExperimentConfig) -> str:
    """A run's ``config.yaml``: the sections it uses, and any other section only when it differs
    from its defaults, so the file still loads back to exactly ``cfg`` (``--resume`` and
    ``compare`` compare the loaded config with the one a run was made with)."""
    full, default = cfg.to_dict(), ExperimentConfig().to_dict()
    used = used_sections(cfg)
    return yaml.safe_dump({k: v for k, v in full.items() if k in used or v != default[k]}, sort_keys=False)
