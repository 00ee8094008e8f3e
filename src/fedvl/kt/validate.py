"""Cross-field checks of a FedMMKT-family configuration (one line each, exit 2 from the CLI)."""

from __future__ import annotations

from pathlib import Path

from fedvl.schema import ConfigError, ExperimentConfig


def validate_kt(cfg: ExperimentConfig, pools_data: bool = False) -> None:
    """``pools_data``: the algorithm trains each client on every client's real data (kt-centralized),
    which needs all of them in one process: never a deployment."""
    from fedvl.data.world import COLORS, DOMAINS, SHAPES
    from fedvl.kt.models import ARCHITECTURES

    t, k = cfg.t2i, cfg.fedmmkt
    checks = [
        (not (pools_data and cfg.run.runtime == "flower-deploy"),
         (f"algorithm {cfg.algorithm.name} pools every client's real data in one place (an upper reference); "
          "it runs in process or on Flower's simulation, not on a deployment")),
        (not cfg.run.secagg, f"run.secagg is for FedAvg-type algorithms on Flower, not {cfg.algorithm.name}"),
        (len(k.domains) >= 1, "fedmmkt.domains must name at least one client domain"),
        (len(k.archs) == len(k.domains),
         f"fedmmkt.archs lists {len(k.archs)} architectures for {len(k.domains)} clients (fedmmkt.domains); "
         "give one per client"),
        (len(k.colors) >= 1 and len(k.shapes) >= 1 and len(k.colors) * len(k.shapes) >= 2,
         "fedmmkt.colors x fedmmkt.shapes must give at least 2 classes"),
        (len(set(k.colors)) == len(k.colors) and len(set(k.shapes)) == len(k.shapes),
         "fedmmkt.colors and fedmmkt.shapes must not repeat"),
        (min(k.train_per_class, k.test_per_class, k.judge_per_class, k.synthetic_per_class, k.eval_per_class) >= 1,
         "fedmmkt.*_per_class must be >= 1"),
        (k.eval_per_class >= 2, "fedmmkt.eval_per_class must be >= 2 (the feature distance needs a covariance)"),
        (k.proto_dim >= 2 and k.batch_size >= 1 and k.local_epochs >= 1, "fedmmkt.proto_dim >= 2, batch_size and "
                                                                         "local_epochs >= 1"),
        (k.lr > 0 and t.lr > 0 and t.pretrain_lr > 0, "learning rates (fedmmkt.lr, t2i.lr, t2i.pretrain_lr) must be > 0"),
        (k.kd_weight >= 0 and k.proto_weight >= 0 and k.align_weight >= 0, "fedmmkt.*_weight must be >= 0"),
        (k.kd_temperature > 0 and k.align_temperature > 0, "fedmmkt.*_temperature must be > 0"),
        (0.0 <= k.filter_threshold <= 1.0, "fedmmkt.filter_threshold must be in [0, 1]"),
        (k.prompt_weight >= 0, "fedmmkt.prompt_weight must be >= 0"),
        (0.0 < k.feedback_top <= 1.0, "fedmmkt.feedback_top must be in (0, 1]"),
        (0.0 <= k.synthetic_end <= 1.0, "fedmmkt.synthetic_end must be in [0, 1]"),
        (k.synthetic_batch >= 1 and k.synthetic_rounds >= 1 and k.synthetic_ramp >= 0,
         "fedmmkt.synthetic_batch and synthetic_rounds must be >= 1, synthetic_ramp >= 0"),
        (0.0 < k.curriculum_start <= 1.0 and k.curriculum_rounds >= 1 and 0.0 <= k.curriculum_static <= 1.0,
         "fedmmkt.curriculum_start must be in (0, 1], curriculum_rounds >= 1, curriculum_static in [0, 1]"),
        (t.image_size >= 8 and t.image_size % 2 ** (len(t.channels) - 1) == 0,
         f"t2i.image_size must be >= 8 and divisible by {2 ** (len(t.channels) - 1)} (one halving per extra level)"),
        (len(t.channels) >= 2 and all(c >= 8 and c % 8 == 0 for c in t.channels),
         "t2i.channels needs >= 2 levels, each a multiple of 8 (group norm of 8 groups)"),
        (t.sample_steps >= 1 and t.sample_batch >= 1 and t.guidance >= 1.0,
         "t2i.sample_steps and sample_batch must be >= 1, t2i.guidance >= 1"),
        (t.pretrain_steps >= 1 and t.pretrain_batch >= 1 and t.pretrain_per_class >= 1,
         "t2i.pretrain_* must be >= 1"),
        (0.0 <= t.cond_dropout < 1.0, "t2i.cond_dropout must be in [0, 1)"),
        (t.lora_rank >= 1 and t.side_rank >= 1 and t.server_steps >= 0 and t.server_batch >= 1,
         "t2i.lora_rank, side_rank, server_batch must be >= 1, server_steps >= 0"),
        (t.max_text_len >= 4, "t2i.max_text_len must be >= 4"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    for d in k.domains:
        if d not in DOMAINS or d == "source":
            raise ConfigError(f"fedmmkt.domains: {d!r} is not a client domain (known: "
                              f"{', '.join(x for x in DOMAINS if x != 'source')}; 'source' is the generator's public domain)")
    for a in k.archs:
        if a not in ARCHITECTURES:
            raise ConfigError(f"fedmmkt.archs: unknown architecture {a!r} (known: {', '.join(ARCHITECTURES)})")
    for c in k.colors:
        if c not in COLORS:
            raise ConfigError(f"fedmmkt.colors: unknown colour {c!r} (known: {', '.join(COLORS)})")
    for s in k.shapes:
        if s not in SHAPES:
            raise ConfigError(f"fedmmkt.shapes: unknown shape {s!r} (known: {', '.join(SHAPES)})")
    if t.source != "fedvl" and not Path(t.source).is_dir():
        raise ConfigError(f"t2i.source: {t.source} is neither 'fedvl' nor a folder (a diffusers pipeline folder "
                          "with unet/, text_encoder/, tokenizer/; nothing is downloaded)")
    if t.weights and not Path(t.weights).is_file():
        raise ConfigError(f"t2i.weights: file not found: {t.weights} (make one with `fedvl pretrain t2i`)")
