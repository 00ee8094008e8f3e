"""The one training loop and the one evaluation loop.

Every algorithm's client update runs through :func:`train_local`; what differs
between algorithms is the ``step`` function (one optimisation step on one
batch), not the loop. The loop owns batch order, step counting, timing and
progress reporting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from fedvl.data.features import EncodedSplit
from fedvl.engine.device import FP32_CPU, Amp, model_device, to_device

if TYPE_CHECKING:
    from fedvl.engine.shard import Shard

Batch = dict[str, torch.Tensor]
StepFn = Callable[[Batch, float, str], float]
"""(batch, learning rate, task) -> loss; does forward, backward and the optimiser step.
``task`` (the data's ``EncodedSplit.task``) names the head the model answers with."""


@dataclass
class TrainResult:
    steps: int
    samples: int
    loss: float  # mean training loss over the steps
    compute_seconds: float  # time inside step functions (forward/backward/optimiser)


def batch_order(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One shuffled epoch of index batches. The generator is seeded per (run, round,
    client), so every round sees a new order (unlike the FedDAT reference code)."""
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield perm[start:start + batch_size]


def train_local(
    model: torch.nn.Module,
    data: EncodedSplit,
    step: StepFn,
    *,
    batch_size: int,
    epochs: int,
    max_steps: int,
    generator: torch.Generator,
    lr_at: Callable[[float], float],
    on_step: Callable[[int, int, float], None] | None = None,
    amp: Amp = FP32_CPU,
    shard: Shard | None = None,
) -> TrainResult:
    """Run ``epochs`` epochs over ``data`` (or exactly ``max_steps`` steps if > 0).

    ``lr_at(fraction_of_this_round_done)`` gives the learning rate, so a global
    schedule can continue across rounds instead of restarting. Batches are
    gathered on the CPU and moved to the model's device; ``amp`` is only
    handed to the step (it wraps the forward passes in autocast).

    ``shard``: this process is one rank of several training the client together
    (``run.client_procs``, :mod:`fedvl.engine.shard`): it steps on its slice of each
    batch, and the loss reported is the whole batch's. ``amp`` then reduces the gradients.
    """
    n = len(data)
    if n == 0:
        return TrainResult(0, 0, float("nan"), 0.0)
    per_epoch = math.ceil(n / batch_size)
    total = max_steps if max_steps > 0 else per_epoch * epochs
    model.train()
    device = model_device(model)
    losses: list[float] = []
    samples = 0
    compute = 0.0
    done = 0
    while done < total:
        for idx in batch_order(n, batch_size, generator):
            batch = to_device(data.batch(idx) if shard is None else shard.batch(data, idx), device)
            t0 = time.perf_counter()
            loss = step(batch, lr_at(done / total), data.task)
            compute += time.perf_counter() - t0  # step() returns loss.item(): the device has finished
            if shard is not None:  # every rank checks (and reports) the same number
                loss = shard.mean(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss} at step {done}; lower algorithm.lr")
            losses.append(loss)
            samples += len(idx)
            done += 1
            if on_step is not None:
                on_step(done, total, loss)
            if done >= total:
                break
    return TrainResult(done, samples, float(np.mean(losses)), compute)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over the classes present) and CE loss.

    Balanced accuracy is reported beside accuracy because yes/no and "0"
    answers dominate: a model stuck at the majority answer looks fine on
    accuracy alone.
    A label of -1 (real data: a test answer outside the client's vocabulary)
    can never be predicted: it counts as wrong in accuracy, is no class of its
    own in balanced accuracy and has no loss term.
    """
    pred = logits.argmax(-1)
    correct = (pred == labels).float()
    recalls = [correct[labels == c].mean().item() for c in labels.unique() if c >= 0]
    known = labels >= 0
    return {
        "acc": correct.mean().item() if len(labels) else float("nan"),
        "bal_acc": float(np.mean(recalls)) if recalls else float("nan"),
        "loss": F.cross_entropy(logits[known], labels[known]).item() if known.any() else float("nan"),
        "n": int(len(labels)),
    }


def vqa_score(logits: torch.Tensor, score_idx: torch.Tensor, score_val: torch.Tensor) -> float:
    """Mean VQA score of the argmax answers: each question scores what its humans'
    answers give the predicted one (see fedvl.data.real.answers.vqa_score), 0 if none matches."""
    if not len(logits):
        return float("nan")
    pred = logits.argmax(-1, keepdim=True)
    return float(((score_idx == pred) * score_val).sum(-1).mean())


@torch.no_grad()
def predict(model: torch.nn.Module, data: EncodedSplit, batch_size: int = 256, amp: Amp = FP32_CPU) -> torch.Tensor:
    """Logits for every sample, as float32 on the CPU (metrics are computed there)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = []
    for start in range(0, len(data), batch_size):
        b = to_device(data.batch(torch.arange(start, min(start + batch_size, len(data)))), device)
        with amp.autocast():
            logits = model(b["input_ids"], b["attention_mask"], b["features"], task=data.task)
        out.append(logits.float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def evaluate(model: torch.nn.Module, data: EncodedSplit, batch_size: int = 256,
             amp: Amp = FP32_CPU) -> dict[str, float]:
    """Classification metrics, plus ``vqa_score`` on real VQA data (human answers known); for a generative
    model, its greedy answers scored as text (fedvl.engine.generate)."""
    if getattr(model, "generative", False):
        from fedvl.engine.generate import evaluate_generative

        return evaluate_generative(model, data, min(batch_size, 32), model.max_new_tokens, amp)
    logits = predict(model, data, batch_size, amp)
    metrics = classification_metrics(logits, data.labels)
    if data.score_idx is not None:
        metrics["vqa_score"] = vqa_score(logits, data.score_idx, data.score_val)
    return metrics


def forward_logits(model: torch.nn.Module, batch: Batch, task: str = "vqa") -> torch.Tensor:
    """The logits ``batch["labels"]`` are the targets of: a classifier's answer logits, or a generative
    model's next-token logits at the answer tokens (fedvl.models.vlm). Every step calls the model here."""
    if getattr(model, "generative", False):
        return model.forward_batch(batch, task)
    return model(batch["input_ids"], batch["attention_mask"], batch["features"], task=task)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the scheduled learning rate; a group with ``lr_scale`` (the full backbone under
    ``algorithm.full_lr``) keeps its ratio to it, so one schedule drives every group."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def cross_entropy_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       extra_loss: Callable[[], torch.Tensor] | None = None, amp: Amp = FP32_CPU) -> StepFn:
    """The plain supervised step; ``extra_loss`` adds a regulariser (FedProx).
    Forward and loss run under ``amp``'s autocast; the loss itself is taken in float32."""

    def step(batch: Batch, lr: float, task: str = "vqa") -> float:
        set_lr(optimizer, lr)
        with amp.autocast():
            logits = forward_logits(model, batch, task)
            loss = F.cross_entropy(logits.float(), batch["labels"])
        total = loss + extra_loss() if extra_loss is not None else loss
        optimizer.zero_grad(set_to_none=True)
        amp.backward_step(total, optimizer)
        return loss.item()

    return step
