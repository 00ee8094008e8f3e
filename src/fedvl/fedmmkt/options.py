"""Typed configuration of FedMMKT runs: the server generator (``t2i``) and the knowledge
transfer federation (``fedmmkt``). Sections of :class:`fedvl.schema.ExperimentConfig`;
the round count, seed, threads and output folder come from ``algorithm`` and ``run``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal


@dataclass
class T2IConfig:
    source: str = "fedvl"
    """``fedvl``: our pixel-space UNet conditioned on MiniLM; or a folder holding a diffusers
    Stable Diffusion style pipeline (unet/, text_encoder/, tokenizer/, optional vae/), read from disk."""
    text: Literal["minilm", "tiny"] = "minilm"
    """Text encoder of ``source=fedvl``: the real MiniLM-L6 or a tiny random BERT (tests)."""
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    image_size: int = 32
    max_text_len: int = 12
    side_rank: int = 16
    """Rank of the trainable residual adapter on the text side (zero at the start)."""
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    weights: str = ""
    """A pretrained generator file (``fedvl pretrain t2i`` output). Empty: the shipped artifact when
    the pretraining settings match it, else the cache (``run.cache_dir``), else pretrain now."""
    pretrain_steps: int = 1200
    pretrain_batch: int = 64
    pretrain_lr: float = 2e-3
    pretrain_per_class: int = 100
    """Public source-domain images per class for pretraining."""
    cond_dropout: float = 0.1
    """Share of prompts dropped to "" in training (the unconditional model for guidance)."""
    sample_steps: int = 10
    """DDIM denoising steps per sample."""
    guidance: float = 4.0
    """Classifier-free guidance scale (1 = none, half the sampling cost)."""
    sample_batch: int = 64
    lora_rank: int = 8
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    lr: float = 1e-4
    """Learning rate of the generator's LoRA + text-side adapter in federation. At 1e-3, 30 steps of
    denoising on its own correctly drawn samples alone cut judge accuracy from 95% to 75% (rank 8
    overfits a few dozen samples)."""
    server_steps: int = 20
    """Generator update steps per round."""
    server_batch: int = 32

    RANGES: ClassVar[dict[str, str]] = {
        "channels": "8..1024", "image_size": "8..512 (the upper bound keeps images within memory)",
        "max_text_len": "4..512 (the text encoders hold 512 positions)", "side_rank": "1..1024",
        "pretrain_steps": ">= 1", "pretrain_batch": "1..4096", "pretrain_lr": "> 0",
        "pretrain_per_class": "1..100000", "cond_dropout": "[0, 1)", "sample_steps": "1..1000", "guidance": ">= 1",
        "sample_batch": "1..4096", "lora_rank": "1..1024", "lr": "> 0", "server_steps": ">= 0",
        "server_batch": "1..4096",
    }
    """Each numeric option's range, checked on load (``fedvl.schema._within``)."""


@dataclass
class FedMMKTConfig:
    colors: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    shapes: list[str] = field(default_factory=lambda: ["circle", "square", "triangle", "diamond", "cross"])
    """The classes are every (colour, shape) pair; the prompt of a class is "a <colour> <shape>"."""
    domains: list[str] = field(default_factory=lambda: ["night", "sketch", "painting", "photo"])
    """One private visual domain per client (the generator is pretrained on ``source`` only)."""
    archs: list[str] = field(default_factory=lambda: ["cnn", "mlp", "mixer", "cnn"])
    """One task-model architecture per client (cnn, cnn-wide, mlp, mixer)."""
    train_per_class: int = 2
    test_per_class: int = 10
    judge_per_class: int = 30
    """Held-out real images per class and client domain that train the fidelity judge."""
    synthetic_per_class: int = 8
    eval_per_class: int = 4
    """Generated images per class for the fidelity scores (fixed noise every round)."""
    proto_dim: int = 64
    lr: float = 2e-3
    batch_size: int = 32
    local_epochs: int = 15
    """One step per epoch with 30 private images: at 5, local-only was still climbing up to 15 points per round at round 8
    so comparisons measured how fast methods learn, not what they reach."""
    kd_weight: float = 1.0
    kd_temperature: float = 3.0
    proto_weight: float = 0.0
    """Weight of the client's pull (mean squared error) of its features toward the global prototypes
    (FedProto-style). 0 for simplicity: the evidence is mixed (with prompt labels at 5 epochs,
    dropping the 0.5 pull gained at round 8 and lost over rounds 6-8; at 15 epochs a 0.1 pull gained on one
    development seed); docs/results.md "FedMMKT"."""
    filter_threshold: float = 0.0
    """Quality control: keep a synthetic sample only if the ensemble's top class is its prompt's and its
    probability is at least this."""
    confidence_weighting: bool = True
    """Weight each client's vote by its confidence on the class it predicts (else a plain mean)."""
    align_weight: float = 0.1
    align_temperature: float = 0.1
    # ---- how clients learn from the synthetic set (each lever a switch, docs/results.md "FedMMKT")
    prompt_weight: float = 1.0
    """Weight of cross-entropy on synthetic samples with their *prompt's* class as the label (the generator is
    class-conditioned, so the prompt is a label the server knows). 0 = the paper-style ensemble soft labels only
    (``kd_weight``); both may be on. The plain distillation client that docs/results.md "FedMMKT" starts from:
    prompt_weight=0, synthetic_bn=eval, synthetic_restyle=false, proto_weight=0.5, feedback_top=1, local_epochs=5."""
    synthetic_batch: int = 32
    """Synthetic samples drawn per training step, beside each private batch (the synthetic share of a step)."""
    synthetic_ramp: int = 0
    """Rounds over which the synthetic terms' weights ramp linearly up to full (0: full from round 1)."""
    synthetic_end: float = 1.0
    """Weight factor of the synthetic terms at the last round, reached linearly from 1 at round 1 (after the ramp):
    below 1 the clients lean on the synthetic set early and end on their own domain."""
    synthetic_restyle: bool = True
    """On the client, map the synthetic pool's per-channel pixel mean and standard deviation (over the whole pool) to
    those of the client's private images before training on it: brightness and contrast of the client's style,
    relative colours kept. Ours; the statistics never leave the client."""
    synthetic_bn: Literal["eval", "train", "batch"] = "batch"
    """Batch norm on synthetic batches. ``eval``: normalised with the private running statistics; ``train``: batch
    statistics that also update the running statistics (source style leaks into them); ``batch``: their own batch
    statistics, the private running statistics untouched (what is used at test time stays private-data only)."""
    synthetic_rounds: int = 1
    """How many rounds' synthetic sets the clients' training pool holds (1: the latest only; more: a larger pool
    of fresh samples from regeneration, at no generation cost)."""
    curriculum: bool = False
    """Draw synthetic samples easy to hard (RDTF-style): difficulty = ``curriculum_static`` x rank of the ensemble's
    loss on the prompt class (static, from the round it was scored) + the rest x rank of the client's own current
    loss (adaptive, recomputed every epoch); each step samples from the easiest share of the pool."""
    curriculum_start: float = 0.5
    """Share of the pool (easiest first) open at round 1; it grows linearly to all of it at ``curriculum_rounds``."""
    curriculum_rounds: int = 4
    curriculum_static: float = 0.5
    fedavg_private_bn: bool = False
    """``kt-fedavg`` only: keep batch-norm layers (weights and running statistics) on each client (FedBN)."""
    feedback_top: float = 0.5
    """Generator update: within each class, only this share of the accepted samples, those the ensemble is surest
    of (1 = every accepted sample, the feedback weights alone)."""

    RANGES: ClassVar[dict[str, str]] = {
        **{f"{k}_per_class": "1..100000" for k in ("train", "test", "judge", "synthetic")},
        "eval_per_class": "2..100000 (the feature distance needs a covariance)", "proto_dim": "2..4096",
        "lr": "> 0", "batch_size": "1..4096", "local_epochs": ">= 1", "kd_weight": ">= 0", "kd_temperature": "> 0",
        "proto_weight": ">= 0", "filter_threshold": "[0, 1]", "align_weight": ">= 0", "align_temperature": "> 0",
        "prompt_weight": ">= 0", "synthetic_batch": "1..4096", "synthetic_ramp": ">= 0", "synthetic_end": "[0, 1]",
        "synthetic_rounds": ">= 1", "curriculum_start": "(0, 1]", "curriculum_rounds": ">= 1",
        "curriculum_static": "[0, 1]", "feedback_top": "(0, 1]",
    }
