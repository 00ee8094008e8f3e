"""The parameter family's time per round, from the config alone (:func:`fedvl.estimate.round_seconds`).

The costs are per training sample on two shared CPU cores (DESIGN.md 4b: the default
model takes about 0.40-0.50 s per step of 32, FedDAT about 2.3x an adapter step).
Evaluation is a forward pass only, about a third of a training sample. Data building
(synthetic images and their frozen features, per client on first use) is counted per
image. Tiny model, 40 clients of 480 training questions, one round: 53 s measured,
56 s estimated. Not measured: the default model's data building, and the Hugging Face
models (ViT-B-sized towers, taken as ten times the default model): for those the
estimate is an order of magnitude, nothing more.
"""

from __future__ import annotations

import math

from fedvl.schema import ExperimentConfig

TRAIN_S_PER_SAMPLE = {"tiny": 0.0015, "default": 0.014, "vilt": 0.14, "clip": 0.14, "blip": 0.14}
BUILD_S_PER_IMAGE = {"tiny": 0.001, "default": 0.006, "vilt": 0.06, "clip": 0.06, "blip": 0.06}
EVAL_FRACTION = 1 / 3
ALGORITHM_FACTOR = {"feddat": 2.3}


def _per_client_questions(cfg: ExperimentConfig) -> tuple[int, int, int, int] | None:
    """(train questions, test questions, train images, test images) of one client, or None when only
    reading the data would tell (real datasets without a cap)."""
    d = cfg.data
    if d.benchmark == "real":
        if not (d.max_train_questions and d.max_test_questions):
            return None
        return d.max_train_questions, d.max_test_questions, d.max_train_questions, d.max_test_questions
    return (d.train_images * d.questions_per_image, d.test_images * d.questions_per_image,
            d.train_images, d.test_images)


def round_seconds(cfg: ExperimentConfig) -> tuple[float, str] | None:
    """(estimated seconds per round, what it is made of), or None when it cannot be told up front."""
    sizes = _per_client_questions(cfg)
    if sizes is None or cfg.model.name not in TRAIN_S_PER_SAMPLE:
        return None  # (hf-vlm: the cost is the checkpoint's, unknown before it loads)
    n_train, n_test, img_train, img_test = sizes
    a, r = cfg.algorithm, cfg.run
    clients = len(cfg.data.clients) if cfg.data.benchmark == "real" else cfg.data.num_clients
    per_round = max(1, math.ceil(a.fraction_fit * clients))
    samples = a.local_steps * a.batch_size if a.local_steps else a.local_epochs * n_train
    per_sample = TRAIN_S_PER_SAMPLE[cfg.model.name] * ALGORITHM_FACTOR.get(a.name, 1.0)
    evaluated = min(r.eval_clients or clients, clients)
    train_s = per_round * samples * per_sample
    eval_s = evaluated * n_test * per_sample * EVAL_FRACTION / r.eval_every
    # clients beyond those kept in memory rebuild their data whenever they are used again
    rebuilt = per_round + evaluated if clients > r.clients_in_memory else 0
    build_s = rebuilt * (img_train + img_test) * BUILD_S_PER_IMAGE[cfg.model.name]
    parts = (f"{per_round:,} clients x {samples:,} training samples, {evaluated:,} clients evaluated"
             + (f", data rebuilt for {rebuilt:,} clients" if rebuilt else ""))
    return train_s + eval_s + build_s, parts
