"""Typed experiment configuration: dataclasses, YAML files, ``key=value`` overrides.

The dataclass defaults *are* the embedded default experiment (``fedvl run`` with
no argument). Every value is type-checked on load; an unknown key or a value of
the wrong type raises :class:`ConfigError` with one line that names the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from fedvl.kt.config import FedMMKTConfig, T2IConfig


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI prints it on one line, exit 2."""


PeftMethod = Literal["adapter", "lora", "bitfit", "layernorm", "head", "full", "prompt"]


@dataclass
class ModelConfig:
    name: Literal["default", "tiny", "vilt", "clip", "blip"] = "default"
    """default: pretrained MiniLM-L6 + ImageNet MobileNetV2; tiny: random, same structure (tests);
    vilt / clip / blip: a Hugging Face checkpoint (see ``checkpoint``)."""
    checkpoint: str = ""
    """vilt / clip / blip: a local checkpoint directory, or a hub repo id already in the local Hugging Face
    cache (nothing is downloaded); empty -> dandelin/vilt-b32-finetuned-vqa, openai/clip-vit-base-patch32,
    Salesforce/blip-vqa-base."""
    peft: PeftMethod = "adapter"
    adapter_reduction: int = 16
    """Bottleneck adapter width is hidden_size // adapter_reduction (FedDAT: 16)."""
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])
    prompt_length: int = 8
    """Soft-prompt vectors prepended to the tokens when peft=prompt (Lester et al. 2021)."""
    vision_tokens: Literal["multiscale", "s32", "s16"] = "multiscale"
    """Visual token features: see VisionLanguageModel.image_features."""
    max_text_len: int = 24
    head_hidden: int = 256
    base: Literal["auto", "vl", "raw"] = "auto"
    """vl: the VL-pretrained base (``fedvl pretrain vl``: connector, low-rank text deltas merged, LayerNorms),
    shipped for the default model; raw: the unpretrained glue of two unimodal encoders (for comparison);
    auto: vl for the default model, raw for tiny. Hugging Face checkpoints are their own base."""
    base_weights: str = ""
    """model.base=vl: a base file made by ``fedvl pretrain vl`` (empty = the one shipped for the default model)."""
    train_connector: bool = False
    """With the vl base the connector belongs to the frozen foundation (as ViLT's embeddings in the paper):
    PEFT methods train their PEFT parameters and the answer head only, unless this is true."""
    gradient_checkpointing: bool = False
    """Recompute the text / fusion encoder's layer activations in the backward pass instead of
    keeping them (less memory for ~one more forward pass; default, vilt, clip and blip)."""


@dataclass
class DataConfig:
    benchmark: Literal["domain", "function", "scene", "task", "real"] = "domain"
    """domain: one visual domain per client; function: one question function per client
    (at most 5 clients); scene: one scene composition per client (at most 6 clients);
    task: one task per client (vqa, itm, entail; at most 3), each with its own head;
    real: real datasets from ``root``, one source per entry of ``clients`` (docs/datasets.md)."""
    root: str = ""
    """real: the folder holding the datasets (layout: docs/datasets.md)."""
    clients: list[str] = field(default_factory=lambda: ["aqua", "abstract", "vizwiz", "cocoqa", "gqa"])
    """real: one source per client, FORMAT[:ARG] (formats: vqav2, abstract, vizwiz, gqa, cocoqa, aqua,
    clove:<stage>, folder:<dir>); the client count is the length of this list (num_clients is not used).
    The default is FedDAT's Domain benchmark."""
    answer_vocab: int = 100
    """real: the top-K training answers of each client form its answer vocabulary (FedDAT: 100)."""
    vocab_scope: Literal["client", "shared"] = "client"
    """real: client -> each client's labels index its own top-K (its head never travels); shared -> the union
    of the clients' top-K lists, one head every client speaks (it travels as the algorithm says)."""
    max_train_questions: int = 0
    """real: keep at most this many training questions per client (a seeded sample; 0 = all)."""
    max_test_questions: int = 0
    """real: keep at most this many test questions per client (a seeded sample; 0 = all)."""
    aqua_knowledge: bool = False
    """real, AQUA: also keep the questions that need external knowledge (need_external_knowledge=true)."""
    num_clients: int = 4
    domains: list[str] = field(default_factory=lambda: ["photo", "sketch", "night", "painting"])
    """Visual domain of each client, in client order (Domain benchmark)."""
    function_domain: str = "cartoon"
    """The one visual domain all clients share (Function benchmark)."""
    scene_domain: str = "photo"
    """The one visual domain all clients share (Scene benchmark)."""
    task_domain: str = "cartoon"
    """The one visual domain all clients share (Task benchmark)."""
    train_images: int = 160
    """Images per client in the training split (each carries ``questions_per_image`` questions)."""
    test_images: int = 100
    questions_per_image: int = 3
    max_objects: int = 2
    """Objects per scene are drawn from 1..max_objects (at most 4: counting answers stop at 4)."""
    image_size: int = 96
    cycle_variants: bool = False
    """Cross-device scale: allow more clients than the benchmark has domains / functions / scenes /
    tasks; client k takes variant k mod n, with its own images (natural partition only)."""
    partition: Literal["natural", "dirichlet", "quantity"] = "natural"
    """natural: the benchmark's own split; dirichlet / quantity: re-partition the pooled data."""
    dirichlet_alpha: float = 0.5
    quantity_alpha: float = 1.0


@dataclass
class AlgorithmConfig:
    name: str = "fedavg"
    rounds: int = 12
    fraction_fit: float = 1.0
    """Share of clients sampled each round (at least one)."""
    local_epochs: int = 1
    local_steps: int = 0
    """If > 0, each client trains exactly this many steps per round instead of epochs."""
    batch_size: int = 32
    lr: float = 1e-3
    full_lr: float = 1e-5
    """model.peft=full: learning rate of the pretrained backbone weights (connector and head keep
    ``lr``; follows the same schedule). 0 = use ``lr`` for everything."""
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """cosine decays over the whole run (never restarts each round)."""
    aggregation: Literal["weighted", "uniform"] = "weighted"
    prox_mu: float = 0.01
    """FedProx proximal weight (only used by fedprox)."""
    dat_weight: float = 0.5
    """FedDAT: w in the Dual-Adapter Teacher h + w·A_C(h) + (1-w)·Â_S(h)."""
    kd_weight: float = 0.5
    """FedDAT: weight of the KD term in both MKD losses (the task loss gets 1 - kd_weight)."""
    kd_temperature: float = 3.0
    feddat_teacher: Literal["dat", "local"] = "dat"
    """FedDAT ablation: "local" replaces the DAT teacher by A_C alone (no DAT)."""
    feddat_mutual: bool = True
    """FedDAT ablation: False trains A_C with the task loss only (one-way KD)."""
    feddat_shared_pass: bool = True
    """FedDAT: when nothing the A_S step moves feeds the encoder's DAT pass (the VL base's frozen connector;
    only A_S and the head train besides A_C), one encoder forward serves the teacher logits and the A_C
    step (3 -> 2 encoder forwards per batch; with dropout on, both roles then see one dropout mask).
    False always runs the three passes."""
    also_travel: list[str] = field(default_factory=list)
    """Parameter groups that travel (are averaged) even though the algorithm keeps them on the
    client, e.g. ``connector`` or ``head`` for feddat; never ``adapter.local``."""
    keep_local: list[str] = field(default_factory=list)
    """Parameter groups every client keeps and never sends, for any algorithm: ``connector``
    and/or ``head``. The FedDAT reference code keeps each client's task head out of the average
    for every baseline; ``keep_local=connector,head`` makes a FedAvg-PEFT baseline send only its
    PEFT parameters, the same upload as FedDAT (the paper's protocol)."""
    aggregator: Literal["mean", "median", "trimmed_mean", "krum"] = "mean"
    """Server rule for the travelling parameters, for every algorithm: mean (FedAvg, weighted as
    ``aggregation`` says), median (coordinate-wise), trimmed_mean (coordinate-wise, ``trim_ratio``)
    or krum (``krum_byzantine``, ``krum_select``). The robust rules ignore sample counts."""
    trim_ratio: float = 0.1
    """trimmed_mean: share beta of the values dropped at each end, per coordinate (in [0, 0.5))."""
    krum_byzantine: int = 1
    """krum: f, the number of malicious updates it must tolerate (needs clients per round >= f + 3)."""
    krum_select: int = 1
    """krum: 1 = Krum (the single best update); m > 1 = multi-Krum (mean of the m best)."""
    clip_update_norm: float = 0.0
    """Norm clipping defence: scale every update delta down to this L2 norm before aggregating (0 = off)."""
    clip_to_median: bool = False
    """Norm clipping defence with no tuning: clip every update delta to the round's median delta norm."""
    max_update_norm: float = 10.0
    """Validation: reject an update whose delta norm exceeds this many times the global parameters'
    norm (floored at 1); 0 = no norm check. Generous: honest deltas are a small fraction of it."""


@dataclass
class RunConfig:
    seed: int = 0
    output_dir: str = "results"
    name: str = ""
    """Run folder name under output_dir; empty -> <algorithm>-<benchmark>-<timestamp>."""
    cache_dir: str = "results/cache"
    threads: int = 2
    eval_every: int = 1
    transport_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Precision of the client updates on the wire: float16 / bfloat16 halve the bytes sent up;
    the server upcasts before aggregating (the global model stays float32)."""
    eval_clients: int = 0
    """Evaluate this many clients (a fixed set drawn once from run.seed) instead of all (0 = all):
    with thousands of clients, evaluating every one would dwarf the round."""
    clients_in_memory: int = 32
    """Simulator: keep at most this many clients' encoded data in memory; others are regenerated
    (synthetic world) or re-read when next sampled, so memory does not grow with the client count."""
    runtime: Literal["simulator", "flower-sim", "flower-deploy"] = "simulator"
    """simulator: clients one after another in this process; flower-sim: the same run through
    Flower's simulation engine; flower-deploy: a real deployment, set by ``fedvl serve`` (its
    nodes start with ``fedvl join``), which ``fedvl run`` refuses."""
    flower_backend: Literal["inprocess", "ray"] = "inprocess"
    """flower-sim: where Flower's simulation engine runs the ClientApps: in this process, one
    at a time (starts instantly), or in Ray worker processes (Flower's default; needs ray)."""
    flower_workers: int = 2
    """flower-sim with the ray backend: client processes working in parallel (one CPU each)."""
    flower_wait_s: float = 120.0
    """Flower: how long the server waits for every client's node to connect."""
    round_timeout_s: float = 0.0
    """Flower: seconds to wait for a round's replies (0 = wait for all); a node silent this long is dropped."""
    min_clients: int = 1
    """Flower: a round with fewer answering clients than this is retried, then the run stops."""
    round_retries: int = 1
    """Flower: how often a round with too few answers is retried before the run stops."""
    secagg: bool = False
    """Flower runtimes: aggregate every train round with Flower's SecAgg+, so the server sees only
    the (weighted) mean of the updates, never one client's. FedAvg-type aggregation only (a plain
    mean: no robust rule, no server-side clipping or DP); the server validates only the aggregate."""
    secagg_shares: int = 0
    """SecAgg+: each client's secrets are split among itself and its shares - 1 nearest neighbours
    (odd, >= 3); 0 = among every sampled client (classic SecAgg: most robust, most messages)."""
    secagg_threshold: int = 0
    """SecAgg+: shares needed to rebuild a secret (>= 2, <= shares); 0 = a majority of the shares. A
    round survives up to shares - threshold dropouts in each neighbourhood; colluding clients below
    the threshold learn nothing."""
    secagg_clip: float = 1.0
    """SecAgg+ quantisation range: every coordinate of a client's weighted update delta is clipped to
    [-secagg_clip, secagg_clip] and quantised into 2^22 levels; clipped coordinates are counted and
    reported. Smaller = finer steps (2 x secagg_clip / 2^22), larger = fewer clipped values."""
    keep_checkpoints: int = 2
    """Round checkpoints kept under checkpoints/ (for --resume); 2 keeps a good one if the newest is damaged."""
    # --- devices, precision, tracking (issue 18; checked by _check_devices) ---
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N: where models, batches and the frozen
    vision tower's feature extraction run. Aggregation and checkpoints stay float32 on the CPU."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Compute precision: bf16 = autocast (CPU and CUDA); fp16 = autocast + gradient scaling (CUDA only).
    Parameters stay float32; what travels is set by transport_dtype alone."""
    trackers: list[str] = field(default_factory=list)
    """Experiment trackers beside metrics.jsonl: tensorboard, mlflow (pip install fedvl[track])."""
    mlflow_uri: str = ""
    """MLflow tracking URI; empty -> a local file store, <output_dir>/mlruns."""
    flower_cpus_per_client: float = 1.0
    """flower-sim with the ray backend: CPUs Ray reserves for each client (ClientApp) process."""
    flower_gpus_per_client: float = 0.0
    """flower-sim with the ray backend: share of a GPU per client (0.25 = four clients share one GPU)."""


@dataclass
class AttackConfig:
    """Model poisoning for robustness experiments; see ``fedvl.algorithms.attacks``."""

    kind: Literal["none", "sign_flip", "scaled", "noise"] = "none"
    """What the attacking clients send: g - scale·Δ (sign_flip), g + scale·Δ (scaled) or
    g + Gaussian noise of scale x the honest delta's RMS (noise)."""
    fraction: float = 0.25
    """Share of the clients that attack, round(fraction x num_clients), chosen once from run.seed."""
    scale: float = 5.0


@dataclass
class PrivacyConfig:
    """Client-level differential privacy (DP-FedAvg, McMahan et al. 2018, https://arxiv.org/abs/1710.06963)."""

    enabled: bool = False
    """Clip every client's update delta to ``clip_norm`` and add Gaussian noise at the server;
    epsilon (opacus RDP accountant, sample rate = share of clients per round, i.e. algorithm.fraction_fit
    rounded to whole clients) is reported every round."""
    clip_norm: float = 1.0
    """S: L2 bound of one client's update delta (all travelling tensors together)."""
    noise_multiplier: float = 1.0
    """z: the noise added to the sum of clipped deltas has std z·S (z·S/m on the mean of m clients)."""
    delta: float = 1e-5
    """The delta at which epsilon is reported."""


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    run: RunConfig = field(default_factory=RunConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    t2i: T2IConfig = field(default_factory=T2IConfig)
    """FedMMKT only: the server's text-to-image model."""
    fedmmkt: FedMMKTConfig = field(default_factory=FedMMKTConfig)
    """FedMMKT only: clients, task models, distillation, feedback."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- coercion


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp: Any, value: Any, from_text: bool) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in get_args(tp):
            if arm is type(None):
                if value is None or (from_text and str(value).lower() in ("none", "null")):
                    return None
                continue
            try:
                return _coerce(key, arm, value, from_text)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (item_tp,) = get_args(tp)
        if from_text and isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", item_tp, v, from_text) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in ("true", "1", "yes", "false", "0", "no"):
            return str(value).lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if from_text:
            try:
                return int(str(value))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if from_text or isinstance(value, str):
            try:
                return float(str(value))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _apply(obj: Any, data: dict[str, Any], prefix: str, from_text: bool) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"unknown config key '{full}' (known under '{prefix or '.'}': {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of keys, got {value!r}")
            _apply(current, value, f"{full}.", from_text)
        else:
            setattr(obj, key, _coerce(full, hints[key], value, from_text))


def parse_override(text: str) -> tuple[list[str], str]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. algorithm.rounds=3)")
    key, value = text.split("=", 1)
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    return key.split("."), value


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Cross-field checks that types alone cannot express."""
    from fedvl.algorithms import available_algorithms  # late: registry imports torch

    # first: NaN fails every comparison below, and "lr must be > 0" would be the wrong reason
    _check_finite(cfg, "")
    checks = [
        (cfg.data.num_clients >= 1, "data.num_clients must be >= 1"),
        (cfg.data.train_images >= 1 and cfg.data.test_images >= 1, "data.train_images and data.test_images must be >= 1"),
        (cfg.data.questions_per_image >= 1, "data.questions_per_image must be >= 1"),
        (1 <= cfg.data.max_objects <= 4, "data.max_objects must be in 1..4 (counting answers go up to 4)"),
        (cfg.data.image_size >= 32, "data.image_size must be >= 32"),
        (0.0 < cfg.algorithm.fraction_fit <= 1.0, "algorithm.fraction_fit must be in (0, 1]"),
        (cfg.algorithm.rounds >= 1, "algorithm.rounds must be >= 1"),
        (cfg.algorithm.batch_size >= 1, "algorithm.batch_size must be >= 1"),
        (cfg.algorithm.lr > 0, "algorithm.lr must be > 0"),
        (cfg.run.eval_clients >= 0, "run.eval_clients must be >= 0 (0 = every client)"),
        (cfg.run.clients_in_memory >= 1, "run.clients_in_memory must be >= 1"),
        (cfg.algorithm.full_lr >= 0, "algorithm.full_lr must be >= 0 (0 = same as algorithm.lr)"),
        (cfg.algorithm.local_epochs >= 1 or cfg.algorithm.local_steps >= 1, "set algorithm.local_epochs or algorithm.local_steps >= 1"),
        (cfg.model.base != "vl" or cfg.model.name in ("default", "tiny"),
         f"model.base=vl applies to the default and tiny models; model.name={cfg.model.name} is a pretrained "
         "vision-language checkpoint already (use model.base=auto)"),
        (cfg.model.base != "vl" or cfg.model.name != "tiny" or bool(cfg.model.base_weights),
         "model.base=vl with the tiny model needs model.base_weights (a base made by `fedvl pretrain vl model=tiny`)"),
        (not cfg.model.base_weights or cfg.model.base == "vl" or (cfg.model.base == "auto" and cfg.model.name == "default"),
         "model.base_weights is set but the model has no VL base (set model.base=vl)"),
        (cfg.model.adapter_reduction >= 1, "model.adapter_reduction must be >= 1"),
        (cfg.model.lora_rank >= 1, "model.lora_rank must be >= 1"),
        (cfg.model.prompt_length >= 1, "model.prompt_length must be >= 1"),
        (cfg.run.threads >= 1, "run.threads must be >= 1"),
        (0.0 <= cfg.algorithm.dat_weight <= 1.0, "algorithm.dat_weight must be in [0, 1]"),
        (0.0 <= cfg.algorithm.kd_weight <= 1.0, "algorithm.kd_weight must be in [0, 1]"),
        (cfg.algorithm.kd_temperature > 0, "algorithm.kd_temperature must be > 0"),
        (cfg.run.eval_every >= 1, "run.eval_every must be >= 1"),
        *((all(g in ("connector", "head") for g in getattr(cfg.algorithm, key)),
           f"algorithm.{key} may list connector and/or head only") for key in ("also_travel", "keep_local")),
        (not set(cfg.algorithm.keep_local) & set(cfg.algorithm.also_travel),
         "algorithm.keep_local and algorithm.also_travel name the same group"),
        (cfg.run.flower_workers >= 1, "run.flower_workers must be >= 1"),
        (cfg.run.flower_wait_s > 0, "run.flower_wait_s must be > 0"),
        (cfg.run.round_timeout_s >= 0, "run.round_timeout_s must be >= 0 (0 = no timeout)"),
        (cfg.run.min_clients >= 1, "run.min_clients must be >= 1"),
        (cfg.run.round_retries >= 0, "run.round_retries must be >= 0"),
        (cfg.data.dirichlet_alpha > 0 and cfg.data.quantity_alpha > 0, "data.*_alpha must be > 0"),
        (cfg.data.answer_vocab >= 1, "data.answer_vocab must be >= 1"),
        (cfg.data.max_train_questions >= 0 and cfg.data.max_test_questions >= 0, "data.max_*_questions must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    _check_devices(cfg)
    from fedvl.algorithms.fedmmkt import KT_ALGORITHMS

    if cfg.algorithm.name in KT_ALGORITHMS:  # the knowledge-transfer family has its own sections
        from fedvl.kt.validate import validate_kt

        validate_kt(cfg)
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
            raise ConfigError(f"data.domains: unknown domain {d!r} (known: {', '.join(DOMAINS)})")
    for key in ("function_domain", "scene_domain", "task_domain"):
        if getattr(cfg.data, key) not in DOMAINS:
            raise ConfigError(f"data.{key}: unknown domain {getattr(cfg.data, key)!r} (known: {', '.join(DOMAINS)})")
    if cfg.data.benchmark == "real":
        _validate_real(cfg)
    if cfg.model.name in ("vilt", "clip", "blip") and cfg.model.peft == "prompt":
        raise ConfigError(f"model.peft=prompt is built for the default model only, not model.name={cfg.model.name}")
    if cfg.algorithm.name == "feddat" and cfg.model.peft != "adapter":
        raise ConfigError(f"feddat needs model.peft=adapter (its dual adapters), got model.peft={cfg.model.peft}")
    if cfg.algorithm.name not in available_algorithms():
        raise ConfigError(
            f"unknown algorithm '{cfg.algorithm.name}' (available: {', '.join(available_algorithms())})"
        )
    if cfg.run.runtime != "simulator":
        from fedvl.algorithms import get_algorithm

        if get_algorithm(cfg.algorithm.name).pooled:
            raise ConfigError(f"algorithm {cfg.algorithm.name} pools every client's data in one place, which a "
                              f"federation cannot do; use run.runtime=simulator for this reference")
    if cfg.data.benchmark == "task":
        # Each task's labels index its own label list, so data of different tasks cannot be pooled.
        from fedvl.algorithms import get_algorithm

        if get_algorithm(cfg.algorithm.name).pooled:
            raise ConfigError(
                f"algorithm {cfg.algorithm.name} pools all clients' data, which is undefined on data.benchmark=task "
                "(every client has its own task and label space); use fedavg, fedprox, feddat or local"
            )
        if cfg.data.partition != "natural":
            raise ConfigError(
                f"data.partition={cfg.data.partition} re-splits pooled data, which is undefined on data.benchmark=task "
                "(every client has its own task and label space); use data.partition=natural"
            )
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
            raise ConfigError(f"run.trackers: unknown tracker {t!r} (known: tensorboard, mlflow)")
    gpus = r.flower_gpus_per_client
    if r.flower_cpus_per_client <= 0 or gpus < 0 or (gpus > 1 and gpus % 1):
        raise ConfigError("run.flower_cpus_per_client must be > 0 and run.flower_gpus_per_client >= 0 "
                          "(a fraction of one GPU, or a whole number of GPUs)")


def _validate_real(cfg: ExperimentConfig) -> None:
    from fedvl.algorithms import get_algorithm, available_algorithms

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


def _check_finite(obj: Any, prefix: str) -> None:
    """No NaN or infinity in any number: every float option is a size, a rate or a bound."""
    import math

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{prefix}{f.name} is not a number (nan); give a finite number")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name} must be a finite number, got {value}")


def _check_reliability(cfg: ExperimentConfig) -> None:
    """Robust aggregation, attack and privacy options (issue 6)."""
    from fedvl.algorithms import available_algorithms, get_algorithm

    a, atk, dp = cfg.algorithm, cfg.attack, cfg.privacy
    checks = [
        (0.0 <= a.trim_ratio < 0.5, "algorithm.trim_ratio must be in [0, 0.5)"),
        (a.krum_byzantine >= 0 and a.krum_select >= 1, "algorithm.krum_byzantine must be >= 0, krum_select >= 1"),
        (a.clip_update_norm >= 0, "algorithm.clip_update_norm must be >= 0 (0 = off)"),
        (not (a.clip_update_norm > 0 and a.clip_to_median),
         "set algorithm.clip_update_norm or algorithm.clip_to_median, not both"),
        (a.max_update_norm >= 0, "algorithm.max_update_norm must be >= 0 (0 = no norm check)"),
        (cfg.run.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1"),
        (0.0 <= atk.fraction <= 1.0, "attack.fraction must be in [0, 1]"),
        (atk.scale > 0, "attack.scale must be > 0"),
        (dp.clip_norm > 0, "privacy.clip_norm must be > 0"),
        (dp.noise_multiplier > 0, "privacy.noise_multiplier must be > 0"),
        (0.0 < dp.delta < 1.0, "privacy.delta must be in (0, 1)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    if atk.kind != "none" and round(atk.fraction * cfg.data.num_clients) < 1:
        raise ConfigError(f"attack.kind={atk.kind} with attack.fraction={atk.fraction} of {cfg.data.num_clients} "
                          "clients selects no attacker; raise attack.fraction")
    if dp.enabled:
        if a.aggregator != "mean" or a.aggregation != "uniform":
            raise ConfigError("privacy.enabled needs algorithm.aggregator=mean and algorithm.aggregation=uniform "
                              "(DP-FedAvg's noise is calibrated to a uniform mean of clipped updates)")
        if a.clip_update_norm > 0 or a.clip_to_median:
            raise ConfigError("privacy.enabled clips with privacy.clip_norm; unset algorithm.clip_update_norm / "
                              "clip_to_median")
    if cfg.run.secagg:
        _check_secagg(cfg)
    if a.aggregator == "krum" and a.name in available_algorithms() and not get_algorithm(a.name).pooled:
        per_round = max(1, round(a.fraction_fit * cfg.data.num_clients))
        if per_round < a.krum_byzantine + 3:
            raise ConfigError(f"algorithm.aggregator=krum with krum_byzantine={a.krum_byzantine} needs at least "
                              f"{a.krum_byzantine + 3} clients per round, got {per_round}")
        if a.krum_select > per_round - a.krum_byzantine:
            raise ConfigError(f"algorithm.krum_select must be <= clients per round - krum_byzantine "
                              f"({per_round - a.krum_byzantine}), got {a.krum_select}")


def _check_secagg(cfg: ExperimentConfig) -> None:
    """SecAgg+ computes one secure sum: only a (weighted) mean of what every client sends fits it."""
    from fedvl.algorithms import available_algorithms, get_algorithm
    from fedvl.algorithms.base import Strategy

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
        if algo.pooled or algo.strategy.aggregate is not Strategy.aggregate:
            raise ConfigError(f"run.secagg needs an algorithm whose server step is a weighted mean (fedavg, fedprox, "
                              f"feddat); {a.name} aggregates differently")
    if r.transport_dtype != "float32":
        raise ConfigError("run.secagg sends masked 32-bit integers: leave run.transport_dtype=float32")
    if not r.secagg_clip > 0:
        raise ConfigError("run.secagg_clip must be > 0")
    per_round = min(cfg.data.num_clients, max(1, round(a.fraction_fit * cfg.data.num_clients)))
    shares = r.secagg_shares or per_round
    threshold = r.secagg_threshold or shares // 2 + 1
    if per_round < 2:
        raise ConfigError(f"run.secagg needs at least 2 clients per round, got {per_round}")
    if per_round > 1000:
        raise ConfigError(f"run.secagg: {per_round} clients per round would overflow SecAgg+'s 32-bit sum (max 1000)")
    if r.secagg_shares < 0 or r.secagg_threshold < 0:
        raise ConfigError("run.secagg_shares and run.secagg_threshold must be >= 0 (0 = automatic)")
    if shares > per_round or (shares < per_round and (shares < 3 or shares % 2 == 0)):
        raise ConfigError(f"run.secagg_shares must be 0 (every client) or odd, >= 3 and <= the {per_round} clients "
                          f"per round, got {r.secagg_shares}")
    if not 2 <= threshold <= shares:
        raise ConfigError(f"run.secagg_threshold must be in 2..{shares} (the shares of each client's secrets; "
                          f"{per_round} clients per round), got {threshold}")


def _read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML config file holds; every way it can fail is one ConfigError line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} cannot be read as text: {type(e).__name__}") from None
    if data is None:  # an empty file is more likely a mistake (a wrong path, a failed save) than a wish
        raise ConfigError(f"config file {p} is empty (to run the embedded default, give no config file)")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of {what}")
    return data


def _load(obj: Any, path: str | Path | None, overrides: list[str] | None, what: str) -> Any:
    """Defaults (``obj``) <- YAML file (if given) <- ``key=value`` overrides."""
    if path is not None:
        _apply(obj, _read_mapping(path, what), "", from_text=False)
    for text in overrides or []:
        keys, value = parse_override(text)
        nested: dict[str, Any] = {keys[-1]: value}
        for k in reversed(keys[:-1]):
            nested = {k: nested}
        _apply(obj, nested, "", from_text=True)
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Defaults <- YAML file (if given) <- ``key=value`` overrides, then validate."""
    sections = "sections (model, data, algorithm, run, attack, privacy, t2i, fedmmkt)"
    return validate(_load(ExperimentConfig(), path, overrides, sections))


def load_section(cls: type, path: str | Path | None, overrides: list[str] | None) -> Any:
    """One settings dataclass (e.g. ``fedvl pretrain vl``'s) from an optional YAML mapping and ``key=value``s;
    its own ``validate()`` runs if it has one."""
    obj = _load(cls(), path, overrides, "keys")
    _check_finite(obj, "")
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def load_config_dict(data: dict[str, Any]) -> ExperimentConfig:
    """A config from an already-parsed mapping (e.g. the YAML text a Flower run carries)."""
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping of sections (model, data, algorithm, run)")
    cfg = ExperimentConfig()
    _apply(cfg, data, "", from_text=False)
    return validate(cfg)


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
