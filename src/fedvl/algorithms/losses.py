"""Losses shared by algorithms, as pure functions of logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KD(student <- teacher) = T² · KL(softmax(teacher/T) || softmax(student/T)), batch mean.

    The T² factor keeps gradient magnitudes comparable across temperatures
    (Hinton et al. 2015, https://arxiv.org/abs/1503.02531).
    """
    t = temperature
    log_p_student = F.log_softmax(student / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher / t, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return (t * t) * kl


def task_kd_parts(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None,
                  kd_weight: float, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, CE, KD): loss = (1 - kd_weight)·CE(logits, y) + kd_weight·KD(logits <- teacher), with its
    parts for an algorithm that reports them (FedDAT's distillation curves). No teacher: CE alone, KD None."""
    ce = F.cross_entropy(logits, labels)
    if teacher is None:
        return ce, ce, None
    kd = kd_loss(logits, teacher, temperature)
    return (1.0 - kd_weight) * ce + kd_weight * kd, ce, kd
