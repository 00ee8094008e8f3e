"""The typed options of an experiment: dataclasses, YAML files, ``key=value`` overrides.

The dataclass defaults *are* the embedded default experiment (``fedvl run`` with
no argument). Every value is type-checked on load; an unknown key or a value of
the wrong type raises :class:`ConfigError` with one line that names the key.

This module knows no subsystem, so every layer may read it; checks across
subsystems (does the algorithm exist, does the benchmark allow it) are
:func:`fedvl.config.validate`, which sits above the algorithms.
"""

from __future__ import annotations

import dataclasses
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

import yaml

from fedvl.fedmmkt.options import FedMMKTConfig, T2IConfig
from fedvl.options.aggregate import RobustOptions
from fedvl.options.feddat import FedDATOptions
from fedvl.options.fedprox import FedProxOptions
from fedvl.options.server_opt import ServerOptOptions


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI prints it on one line, exit 2."""


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlevel = 80, 80, 40, 3


def _short(value: Any) -> str:
    """``repr(value)`` cut to a line's worth: a message quotes what was given, never all of a huge value."""
    return _REPR.repr(value)


PeftMethod = Literal["adapter", "lora", "bitfit", "layernorm", "head", "full", "prompt"]


@dataclass
class ModelConfig:
    name: Literal["default", "tiny", "vilt", "clip", "blip", "hf-vlm"] = "default"
    """default: pretrained MiniLM-L6 + ImageNet MobileNetV2; tiny: random, same structure (tests);
    vilt / clip / blip: a Hugging Face checkpoint (see ``checkpoint``); hf-vlm: a generative
    image-text-to-text checkpoint (LLaVA, Qwen2-VL / Qwen2.5-VL, SmolVLM / Idefics3, Gemma 3, ...) in
    ``checkpoint``: answers are generated and scored (docs/generative.md)."""
    checkpoint: str = ""
    """vilt / clip / blip / hf-vlm (required there): a local checkpoint directory, or a hub repo id already in the local Hugging Face
    cache (nothing is downloaded); empty -> dandelin/vilt-b32-finetuned-vqa, openai/clip-vit-base-patch32,
    Salesforce/blip-vqa-base."""
    peft: PeftMethod = "adapter"
    adapter_reduction: int = 16
    """Bottleneck adapter width is hidden_size // adapter_reduction (FedDAT: 16)."""
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])
    client_lora_ranks: list[int] = field(default_factory=list)
    """peft=lora: one LoRA rank per client, in client order, each <= lora_rank (sites with less GPU memory
    train fewer rank components; aggregated as lora_aggregation says, see fedvl.algorithms.hetlora); empty =
    every client uses lora_rank."""
    lora_aggregation: Literal["zeropad", "stack"] = "zeropad"
    """peft=lora: how the server combines the clients' factors. zeropad: each factor averaged (each rank
    component over the clients that hold it, HetLoRA); stack: the clients' products B_k A_k summed
    exactly and merged into the frozen base weights, which then travel down too, and every client starts
    each round from fresh factors (FLoRA, fedvl.algorithms.flora). Any client ranks, equal ones too."""
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
    quantize: Literal["none", "4bit"] = "none"
    """hf-vlm: 4bit = QLoRA (Dettmers et al. 2023): the language model's weights stored in 4-bit NF4 with
    double quantisation through bitsandbytes (`pip install 'fedvl[qlora]'`), computing in bf16, LoRA on
    top (model.peft=lora); the vision tower, projector and LM head stay unquantised. CUDA only."""
    answer_mode: Literal["generate", "rank"] = "generate"
    """hf-vlm evaluation: generate = greedy decoding, the text scored; rank = the answer of the client's
    label space whose assistant turn is most likely (cheaper for a small label space, never outside it)."""
    max_new_tokens: int = 16
    """hf-vlm: the longest answer greedy decoding generates at evaluation, in tokens."""
    gradient_checkpointing: bool = False
    """Recompute the text / fusion encoder's layer activations in the backward pass instead of
    keeping them (less memory for ~one more forward pass; default, vilt, clip and blip)."""

    RANGES: ClassVar[dict[str, str]] = {
        "adapter_reduction": "1..4096", "lora_rank": "1..1024", "lora_alpha": ">= 1",
        "prompt_length": "1..512 (the text encoders hold 512 positions)",
        "max_text_len": "4..512 (the text encoders hold 512 positions)",
        "head_hidden": "1..65536 (the upper bound keeps the head within memory)",
        "max_new_tokens": "1..4096",
        "client_lora_ranks": "1..1024 (each; the model holds lora_rank, the largest)",
    }
    """Each numeric option's range, checked on load (see ``_within``)."""


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

    RANGES: ClassVar[dict[str, str]] = {
        "answer_vocab": ">= 1", "max_train_questions": ">= 0", "max_test_questions": ">= 0",
        "num_clients": "1..100000 (the upper bound keeps the per-client records within memory)",
        "train_images": "1..100000 (per client)", "test_images": "1..100000 (per client)",
        "questions_per_image": "1..64", "max_objects": "1..4 (counting answers go up to 4)",
        "image_size": "32..1024 (the upper bound keeps images within memory)",
        "dirichlet_alpha": "> 0", "quantity_alpha": "> 0",
    }


@dataclass
class TrainingOptions:
    """What every algorithm reads: the rounds, the clients' local training and the weighting of the mean."""

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

    RANGES: ClassVar[dict[str, str]] = {
        "rounds": "1..1000000", "fraction_fit": "(0, 1]", "local_epochs": ">= 0", "local_steps": ">= 0",
        "batch_size": "1..65536 (the upper bound keeps a batch within memory)", "lr": "> 0",
        "full_lr": ">= 0", "weight_decay": ">= 0",
    }


@dataclass
class TravelOptions:
    """What travels, for any algorithm of the parameter family (``fedvl.models.params`` groups)."""

    also_travel: list[str] = field(default_factory=list)
    """Parameter groups that travel (are averaged) even though the algorithm keeps them on the
    client, e.g. ``connector`` or ``head`` for feddat; never ``adapter.local``."""
    keep_local: list[str] = field(default_factory=list)
    """Parameter groups every client keeps and never sends, for any algorithm: ``connector``
    and/or ``head``. The FedDAT reference code keeps each client's task head out of the average
    for every baseline; ``keep_local=connector,head`` makes a FedAvg-PEFT baseline send only its
    PEFT parameters, the same upload as FedDAT (the paper's protocol)."""

    RANGES: ClassVar[dict[str, str]] = {}


# the algorithm section's parts, in the order of its keys
_ALGORITHM_PARTS = (TrainingOptions, FedProxOptions, FedDATOptions, TravelOptions, RobustOptions, ServerOptOptions)


@dataclass
class AlgorithmConfig(*reversed(_ALGORITHM_PARTS)):  # type: ignore[misc]
    """The ``algorithm`` section: one flat set of keys composed of the plugins' own option classes, each
    defined beside its plugin's name (``fedvl/options/``). A dataclass takes its bases' fields in reverse
    MRO order, so listing the parts in reverse keeps the keys in ``_ALGORITHM_PARTS``' order (the order of
    config.yaml and ``fedvl show-config``)."""

    RANGES: ClassVar[dict[str, str]] = {k: v for part in _ALGORITHM_PARTS for k, v in part.RANGES.items()}
    """Every part's ranges, merged (``check_ranges`` reads the section's class, which inherits only one)."""
    OWNED: ClassVar[frozenset[str]] = frozenset().union(*(getattr(p, "OWNED", ()) for p in _ALGORITHM_PARTS))
    """Options of one algorithm, checked against their range by its own check only: a config shared
    between methods is not refused for an option the chosen one never reads."""


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
    # --- devices, precision, tracking (checked by fedvl.config._check_devices) ---
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
    client_procs: int = 1
    """Train each client on this many processes, data parallel (fedvl.engine.shard): every batch of
    algorithm.batch_size is split among them and their gradients averaged, so the numbers are one
    process's at the same batch size, up to float rounding. On CUDA one GPU per process from
    run.device's on (NCCL), else on the CPU (gloo) with run.threads // client_procs threads each. The
    processes start with the run's first client and serve every client after it; 1 = this process."""

    RANGES: ClassVar[dict[str, str]] = {
        "seed": "0..4294967295 (numpy's and torch's generators take 32-bit seeds)",
        "threads": "1..1024", "eval_every": ">= 1", "eval_clients": ">= 0", "clients_in_memory": ">= 1",
        "flower_workers": "1..1024", "flower_wait_s": "> 0", "round_timeout_s": ">= 0", "min_clients": ">= 1",
        "round_retries": ">= 0", "secagg_shares": ">= 0", "secagg_threshold": ">= 0", "secagg_clip": "> 0",
        "keep_checkpoints": ">= 1 (--resume continues from a kept round checkpoint)",
        "flower_cpus_per_client": "> 0", "flower_gpus_per_client": ">= 0",
        "client_procs": "1..64",
    }


@dataclass
class AttackConfig:
    """Model poisoning for robustness experiments; see ``fedvl.algorithms.attacks``."""

    kind: Literal["none", "sign_flip", "scaled", "noise"] = "none"
    """What the attacking clients send: g - scale·Δ (sign_flip), g + scale·Δ (scaled) or
    g + Gaussian noise of scale x the honest delta's RMS (noise)."""
    fraction: float = 0.25
    """Share of the clients that attack, round(fraction x num_clients), chosen once from run.seed."""
    scale: float = 5.0

    RANGES: ClassVar[dict[str, str]] = {"fraction": "[0, 1]", "scale": "> 0"}


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

    RANGES: ClassVar[dict[str, str]] = {"clip_norm": "> 0", "noise_multiplier": "> 0", "delta": "(0, 1)"}


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
            raise ConfigError(f"{key}: {_short(value)} is not {_type_name(tp)}")
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
        raise ConfigError(errors[0] if errors else f"{key}: bad value {_short(value)}")
    if origin is list:
        (item_tp,) = get_args(tp)
        if from_text and isinstance(value, str):
            value = value.split(",") if value else []  # "key=" is the empty list
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_short(value)}")
        if "" in value:  # "a,,b" or "a," is a slip: a silently dropped item would be the wrong run
            raise ConfigError(f"{key}: item {value.index('') + 1} is empty (comma-separated, no empty items)")
        return [_coerce(f"{key}[{i}]", item_tp, v, from_text) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in ("true", "1", "yes", "false", "0", "no"):
            return str(value).lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {_short(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {_short(value)}")
        if isinstance(value, int):
            return value
        if from_text:
            try:
                return int(str(value))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {_short(value)}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {_short(value)}")
        if isinstance(value, (int, float)):
            return float(value)
        if from_text or isinstance(value, str):
            try:
                return float(str(value))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {_short(value)}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {_short(value)}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _apply(obj: Any, data: dict[str, Any], prefix: str, from_text: bool) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"unknown config key {_short(full)} (known under '{prefix or '.'}': {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of keys, got {_short(value)}")
            _apply(current, value, f"{full}.", from_text)
        else:
            setattr(obj, key, _coerce(full, hints[key], value, from_text))


def parse_override(text: str) -> tuple[list[str], str]:
    if "=" not in text:
        raise ConfigError(f"override {_short(text)} is not of the form key=value (e.g. algorithm.rounds=3)")
    key, value = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {_short(text)} has an empty key")
    return key.split("."), value


_RANGE = re.compile(r"(?:(>=|>) (\S+)|(\S+)\.\.(\S+)|([\[(])(\S+), (\S+)([\])]))(?: \((.+)\))?")


def _bound(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _within(value: int | float, spec: str) -> bool:
    """Whether ``value`` lies in ``spec``: ">= A", "> A", "A..B" (integers, both ends included), or an
    interval "[A, B]", "(A, B]", "[A, B)", "(A, B)"; a trailing " (why)" is the reason for the bound."""
    m = _RANGE.fullmatch(spec)
    if m is None:
        raise ValueError(f"malformed range {spec!r}")
    op, lo, a, b, left, lo2, hi2, right, _ = m.groups()
    if op:
        return value >= _bound(lo) if op == ">=" else value > _bound(lo)
    if a is not None:
        return _bound(a) <= value <= _bound(b)
    lo_ok = value >= _bound(lo2) if left == "[" else value > _bound(lo2)
    hi_ok = value <= _bound(hi2) if right == "]" else value < _bound(hi2)
    return lo_ok and hi_ok


def _check_numbers(obj: Any, prefix: str) -> None:
    """Every number finite and inside the range its section declares (its ``RANGES``: option -> range,
    see :func:`_within`; a list's range holds for each item), in one pass over the sections. Options in
    a section's ``OWNED`` are left to the algorithm that uses them (:func:`check_ranges` in its check)."""
    import math

    owned = getattr(type(obj), "OWNED", frozenset())
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_numbers(value, f"{prefix}{f.name}.")
            continue
        for at, v in _items(f"{prefix}{f.name}", value):
            if isinstance(v, float) and math.isnan(v):
                raise ConfigError(f"{at} is not a number (nan); give a finite number")
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{at} must be a finite number, got {v}")
        if f.name not in owned:
            check_ranges(obj, prefix, [f.name])


def _items(key: str, value: Any) -> list[tuple[str, Any]]:
    return [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key, value)]


def check_ranges(obj: Any, prefix: str, names: list[str]) -> None:
    """Options ``names`` of section ``obj`` (``prefix`` e.g. "algorithm.") inside their declared ranges."""
    ranges = type(obj).RANGES
    for name in names:
        if name not in ranges:
            continue
        spec = ranges[name]
        for at, v in _items(f"{prefix}{name}", getattr(obj, name)):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not _within(v, spec):
                why = _RANGE.fullmatch(spec).group(9)  # the reason goes after the value: "in 1..4, got 9 (...)"
                bound = spec[:-len(why) - 3] if why else spec
                raise ConfigError(f"{at} must be {'' if bound.startswith('>') else 'in '}{bound}, got {_short(v)}"
                                  + (f" ({why})" if why else ""))


MAX_CONFIG_BYTES = 1 << 20
"""A config file is a few kB; a larger one is a wrong path (a dataset, a log), never read whole."""
MAX_CONFIG_NODES = 10_000
"""Values a config file may stand for once its aliases are expanded (the full default config is ~200):
a few hundred bytes of nested aliases can stand for billions ("billion laughs")."""


class _Refused(yaml.YAMLError):
    """What :class:`_ConfigLoader` refuses in a file that is valid YAML."""


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last one silently,
    so a repeated section would drop the first) and alias expansion beyond ``MAX_CONFIG_NODES``
    (counted on the composed node graph, before anything is built or formatted)."""

    def compose_document(self):
        node = super().compose_document()
        sizes: dict[int, int] = {}

        def size(n: yaml.Node, path: frozenset[int]) -> int:
            if id(n) in path:
                raise _Refused(f"an alias refers to itself (line {n.start_mark.line + 1})")
            if id(n) not in sizes:
                kids = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else \
                    n.value if isinstance(n, yaml.SequenceNode) else []
                sizes[id(n)] = 1 + sum(size(c, path | {id(n)}) for c in kids)
                if sizes[id(n)] > MAX_CONFIG_NODES:
                    raise _Refused(f"its aliases expand to more than {MAX_CONFIG_NODES:,} values "
                                   f"(line {n.start_mark.line + 1}); a config file needs a few hundred")
            return sizes[id(n)]

        if node is not None:
            size(node, frozenset())
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise _Refused(f"key {_short(key)} is given twice in one mapping (again on line "
                                   f"{key_node.start_mark.line + 1}); give each key once")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML config file holds; every way it can fail is one ConfigError line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {p} is {p.stat().st_size:,} bytes; a config file is at most "
                          f"{MAX_CONFIG_BYTES:,} (is it the right file?)")
    try:
        data = yaml.load(p.read_text(), Loader=_ConfigLoader)
    except _Refused as e:
        raise ConfigError(f"config file {p}: {e}") from None
    except RecursionError:  # the parser recurses once per level: thousands of nested brackets exhaust the stack
        raise ConfigError(f"config file {p} nests values thousands of levels deep; a config file has a few") from None
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


def load_section(cls: type, path: str | Path | None, overrides: list[str] | None) -> Any:
    """One settings dataclass (e.g. ``fedvl pretrain vl``'s) from an optional YAML mapping and ``key=value``s;
    its own ``validate()`` runs if it has one."""
    obj = _load(cls(), path, overrides, "keys")
    _check_numbers(obj, "")
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
