"""FedMMKT: He et al., "FedMMKT: Co-Enhancing a Server Text-to-Image Model and Client Task
Models in Multi-Modal Federated Learning", arXiv 2510.12254, https://arxiv.org/abs/2510.12254.

No public code exists and only the abstract and introduction are public, so the round is
our reconstruction (DESIGN.md 1.2, close to the same group's FedKTL, CVPR 2024); every
choice below that the paper does not state is marked *ours*.

One round (the loop is :func:`fedvl.runtime.loop.run_rounds`, this family's server side
:class:`fedvl.runtime.knowledge.KnowledgeServer`):

1. the server generates a synthetic set from the class prompts with its text-to-image model;
2. each client trains its own task model (any architecture) on its private data plus
   distillation toward the previous round's ensemble soft labels on the previous round's
   accepted synthetic samples, and returns, for the new synthetic set only, its logits and
   per-class feature prototypes: never weights, never data (:class:`KTClient`);
3. the server builds ensemble soft labels weighted by each client's per-class confidence
   (:func:`ensemble`), keeps the samples whose ensemble label is their prompt's
   (:func:`quality_filter`), and fine-tunes the generator's LoRA and text-side adapter with
   the feedback-weighted denoising loss on the accepted samples plus an alignment loss between
   the text-side embedding of every class prompt and the clients' global prototype of that
   class (:func:`alignment_loss`).

The baselines share the client and the loop and differ only in the strategy's flags:
``kt-distill`` distils on one fixed synthetic set with a frozen generator (FedMD / FedDF
style: what updating the generator adds), ``kt-local`` trains alone, ``kt-fedavg`` averages
task-model weights among clients of the same architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedvl.algorithms.base import Algorithm, register
from fedvl.engine.device import FP32_CPU, Amp, model_device
from fedvl.kt.config import FedMMKTConfig
from fedvl.kt.validate import validate_kt

# ------------------------------------------------------------------ pure server functions


def ensemble(logits: dict[str, torch.Tensor], confidence_weighting: bool = True) -> torch.Tensor:
    """Ensemble class probabilities (N, C) from every client's logits (N, C) on the same samples.

    With ``confidence_weighting`` (ours: the paper says only "weighted by confidence"), client
    k's vote on sample i is weighted by ``conf[k, c]``, its mean top probability over the
    samples it assigns to class ``c = argmax_k(i)``: a client that is sure of its calls of a
    class counts more on that class. Otherwise every client counts the same.
    """
    probs = torch.stack([F.softmax(v.float(), dim=1) for v in logits.values()])  # (K, N, C)
    if not confidence_weighting:
        return probs.mean(0)
    top, pred = probs.max(2)  # (K, N)
    k, _, c = probs.shape
    sums = torch.zeros(k, c).scatter_add_(1, pred, top)
    counts = torch.zeros(k, c).scatter_add_(1, pred, torch.ones_like(top))
    conf = sums / counts.clamp_min(1)  # (K, C): per-class confidence, 0 for classes never predicted
    w = conf.gather(1, pred)  # (K, N): each vote's weight
    mix = (w[..., None] * probs).sum(0) / w.sum(0)[:, None].clamp_min(1e-12)
    return mix


def quality_filter(probs: torch.Tensor, prompt_labels: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Boolean mask of the synthetic samples to keep: the ensemble's top class is the prompt's
    class and its probability is at least ``threshold``."""
    top, pred = probs.max(1)
    return (pred == prompt_labels) & (top >= threshold)


def global_prototypes(protos: dict[str, torch.Tensor], counts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-class mean of the clients' prototypes (C, D), weighted by how many samples each
    prototype averages; a class no client saw gets zeros."""
    p = torch.stack([protos[k].float() for k in protos])  # (K, C, D)
    n = torch.stack([counts[k].float() for k in protos])  # (K, C)
    return (p * n[..., None]).sum(0) / n.sum(0)[:, None].clamp_min(1)


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teacher || softmax(student / T)), batch mean. Teacher probabilities are
    re-tempered as softmax(log p / T), i.e. the teacher's logits divided by T."""
    t = temperature
    teacher = F.softmax(teacher_probs.clamp_min(1e-12).log() / t, dim=1)
    return t * t * F.kl_div(F.log_softmax(student_logits / t, dim=1), teacher, reduction="batchmean")


def alignment_loss(text_emb: torch.Tensor, protos: torch.Tensor, seen: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE between the projected text-side embedding of every class prompt (C, D) and the
    global prototypes (C, D): class c's prompt must be nearest to class c's prototype. Classes
    no client saw (``seen`` False) are left out. Ours: the paper names an alignment loss only."""
    if not bool(seen.any()):
        return text_emb.sum() * 0.0
    sim = F.normalize(text_emb, dim=1) @ F.normalize(protos, dim=1).T / temperature  # (C, C)
    idx = seen.nonzero().flatten()
    return F.cross_entropy(sim[idx][:, idx], torch.arange(len(idx), device=sim.device))


# ------------------------------------------------------------------ the client half


@dataclass
class DistillSet:
    """What the server sends for distillation: accepted synthetic images and their soft labels."""

    images: torch.Tensor
    soft: torch.Tensor


class KTClient:
    """Trains a client's task model on private data (+ distillation, + prototype pull) and
    reports logits and prototypes on the synthetic set. Nothing else leaves it."""

    def __init__(self, cfg: FedMMKTConfig, amp: Amp = FP32_CPU):
        self.cfg, self.amp = cfg, amp

    def train(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
              distill: DistillSet | None, protos: torch.Tensor | None, gen: torch.Generator,
              on_step=None) -> dict[str, float]:
        """``model`` on the compute device; data, prototypes and soft labels arrive on the CPU
        (batch order is drawn there from ``gen``, the same on every device)."""
        c, amp = self.cfg, self.amp
        dev = model_device(model)
        opt = torch.optim.AdamW(model.parameters(), lr=c.lr)
        model.train()
        protos = protos.to(dev) if protos is not None else None
        steps, total, n = 0, 0.0, len(labels)
        planned = c.local_epochs * -(-n // c.batch_size)
        for _ in range(c.local_epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, c.batch_size):
                idx = order[start:start + c.batch_size]
                y = labels[idx].to(dev)
                with amp.autocast():
                    feat, logits = model(images[idx].to(dev))
                    loss = F.cross_entropy(logits.float(), y)
                    if protos is not None and c.proto_weight > 0:
                        loss = loss + c.proto_weight * F.mse_loss(feat.float(), protos[y])
                    if distill is not None and len(distill.soft) and c.kd_weight > 0:
                        j = torch.randint(0, len(distill.soft), (min(c.batch_size, len(distill.soft)),),
                                          generator=gen)
                        # batch norm in eval mode here: the synthetic images (source style) are normalised
                        # with the private domain's running statistics and do not shift them; with train-mode
                        # BN the night client's CNN collapsed to one class (6.7%) at evaluation
                        model.eval()
                        _, s_logits = model(distill.images[j].to(dev))
                        model.train()
                        loss = loss + c.kd_weight * kd_loss(s_logits.float(), distill.soft[j].to(dev),
                                                            c.kd_temperature)
                opt.zero_grad(set_to_none=True)
                amp.backward_step(loss, opt)
                steps, total = steps + 1, total + loss.item()
                if on_step is not None:
                    on_step(steps, planned, loss.item())
        if not torch.isfinite(torch.tensor(total)):
            raise FloatingPointError("client training diverged (loss is not finite)")
        return {"train_loss": total / max(steps, 1), "steps": steps}

    @torch.no_grad()
    def report(self, model: torch.nn.Module, synthetic: torch.Tensor, prompt_labels: torch.Tensor,
               num_classes: int) -> dict[str, torch.Tensor]:
        """What travels up: logits on the synthetic set and per-class mean features
        (prototypes, grouped by prompt class) with the count each one averages."""
        model.eval()
        dev = model_device(model)
        feats, logits = [], []
        for start in range(0, len(synthetic), 256):
            with self.amp.autocast():
                f, lo = model(synthetic[start:start + 256].to(dev))
            feats.append(f.float().cpu())  # what travels is float32 on the CPU
            logits.append(lo.float().cpu())
        feat = torch.cat(feats)
        counts = torch.bincount(prompt_labels, minlength=num_classes).float()
        sums = torch.zeros(num_classes, feat.shape[1]).index_add_(0, prompt_labels, feat)
        return {"logits": torch.cat(logits), "protos": sums / counts[:, None].clamp_min(1), "proto_counts": counts}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        model.eval()
        dev = model_device(model)
        with self.amp.autocast():
            pred = torch.cat([model(images[s:s + 256].to(dev))[1].argmax(1).cpu() for s in range(0, len(labels), 256)])
        per_class = [float((pred[labels == k] == k).float().mean()) for k in labels.unique()]
        return {"acc": float((pred == labels).float().mean()), "bal_acc": float(sum(per_class) / len(per_class)),
                "n": len(labels)}


# ------------------------------------------------------------------ the server halves


class KTServerRule:
    """What the server does each round; the loop (:class:`fedvl.runtime.knowledge.KnowledgeServer`)
    reads these flags, nothing else. The default is FedMMKT; each baseline turns parts off."""

    synthetic = True
    """Send a synthetic set, collect logits and prototypes, distil on the ensemble."""
    regenerate = True
    """A new synthetic set every round (else one fixed set from the pretrained generator)."""
    update_generator = True
    """Fine-tune the generator from the clients' feedback."""
    average_weights = False
    """FedAvg of task-model weights within each architecture group (weights travel)."""

    def __init__(self, cfg=None):
        self.cfg = cfg


class FixedSetDistill(KTServerRule):
    regenerate = False
    update_generator = False


class LocalOnly(KTServerRule):
    synthetic = False
    regenerate = False
    update_generator = False


class SameArchFedAvg(LocalOnly):
    average_weights = True


def _kt(name: str, server: type[KTServerRule], summary: str) -> Algorithm:
    # one registry for every algorithm: this family exchanges knowledge, not parameters, and checks its
    # own sections (t2i, fedmmkt); the adapter fields of Algorithm do not apply to its task models
    return register(Algorithm(name, server, KTClient, summary, exchange="knowledge", check=validate_kt))


FEDMMKT = _kt("fedmmkt", KTServerRule, "FedMMKT: synthetic set from the server T2I model, ensemble distillation, "
                                      "generator LoRA updated from client feedback + prototype alignment")
KT_DISTILL = _kt("kt-distill", FixedSetDistill,
                 "logit distillation on one fixed synthetic set, generator frozen (FedMD/FedDF style)")
KT_LOCAL = _kt("kt-local", LocalOnly, "each client trains its own task model alone")
KT_FEDAVG = _kt("kt-fedavg", SameArchFedAvg, "FedAvg of task-model weights among clients of the same architecture")
