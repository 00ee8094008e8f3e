"""FedMMKT: He et al., "FedMMKT: Co-Enhancing a Server Text-to-Image Model and Client Task
Models in Multi-Modal Federated Learning", arXiv 2510.12254, https://arxiv.org/abs/2510.12254.

No public code exists and only the abstract and introduction are public, so the round is
our reconstruction (DESIGN.md 1.2, close to the same group's FedKTL, CVPR 2024); every
choice below that the paper does not state is marked *ours*.

One round (the loop is :func:`fedvl.rounds.loop.run_rounds`, this family's server side
:class:`fedvl.fedmmkt.exchange.KnowledgeServer`):

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

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from fedvl.algorithms.base import Algorithm, register
from fedvl.engine.device import FP32_CPU, Amp, model_device
from fedvl.fedmmkt.options import FedMMKTConfig
from fedvl.fedmmkt.validate import validate_kt

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


def feedback_select(probs: torch.Tensor, prompt_labels: torch.Tensor, keep: torch.Tensor, top: float) -> torch.Tensor:
    """The accepted samples the generator learns from: within every class, the ``top`` share of the accepted ones
    that the ensemble gives the highest probability of their prompt's class (ours). Once the clients recognise
    nearly every sample (prompt-label training does that within a few rounds), the filter keeps everything and the
    feedback weights are all near 1: the update would no longer prefer what looks like the clients' data. A
    per-class share keeps that preference, and keeps every class in the update."""
    if top >= 1.0:
        return keep
    p = probs.gather(1, prompt_labels[:, None]).squeeze(1)
    out = torch.zeros_like(keep)
    for c in prompt_labels.unique():
        idx = (keep & (prompt_labels == c)).nonzero().flatten()
        if len(idx):
            n = max(1, math.ceil(top * len(idx)))
            out[idx[p[idx].argsort(descending=True, stable=True)[:n]]] = True
    return out


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
    """The clients' synthetic training pool: images the server generated, with what it knows about them.

    ``soft``: the ensemble's class probabilities (None for samples no ensemble has scored yet);
    ``labels``: each sample's prompt class (None: soft labels only); ``keep``: the quality filter's
    verdict (None: every sample passed). Soft-label distillation uses the kept samples only."""

    images: torch.Tensor
    soft: torch.Tensor | None
    labels: torch.Tensor | None = None
    keep: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)

    def tensors(self) -> dict[str, torch.Tensor]:
        """As named tensors (checkpoints, Flower records); the parts that are None are left out."""
        return {k: v for k, v in (("images", self.images), ("soft", self.soft), ("labels", self.labels),
                                  ("keep", self.keep)) if v is not None}

    @staticmethod
    def from_tensors(t: dict[str, torch.Tensor]) -> "DistillSet":
        return DistillSet(t["images"], t.get("soft"), t.get("labels"), t.get("keep"))


def next_pool(pool: DistillSet | None, images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor,
              keep: torch.Tensor, max_sets: int) -> DistillSet:
    """The pool after a round: this round's scored synthetic set appended, the oldest dropped so that at most
    ``max_sets`` sets of this size remain (ours: the paper keeps no pool). A fixed synthetic set (``kt-distill``)
    passes ``max_sets=1``: it is re-scored by the newest ensemble, not duplicated."""
    new = DistillSet(images, probs, labels, keep)
    if pool is None or max_sets <= 1 or pool.soft is None or pool.labels is None or pool.keep is None:
        return new
    cap = max_sets * len(images)
    return DistillSet(torch.cat([pool.images, images])[-cap:], torch.cat([pool.soft, probs])[-cap:],
                      torch.cat([pool.labels, labels])[-cap:], torch.cat([pool.keep, keep])[-cap:])


def training_pool(cfg: FedMMKTConfig, pool: DistillSet | None, synthetic_images: torch.Tensor | None,
                  synthetic_labels: torch.Tensor | None) -> DistillSet | None:
    """What the clients train on this round: the scored pool; in round 1, before any ensemble exists, the fresh
    synthetic set with its prompt labels when prompt-label training is on (ours: otherwise round 1 would have
    no synthetic training at all)."""
    if pool is not None:
        return pool
    if cfg.prompt_weight > 0 and synthetic_images is not None:
        return DistillSet(synthetic_images, None, synthetic_labels, None)
    return None


def pool_by_arch(data: dict, archs: dict[str, str]) -> dict:
    """``kt-centralized``: every client's training set becomes the pooled real data of all clients of its
    architecture (an upper reference: raw data moves, which no federated method may do)."""
    from fedvl.fedmmkt.data import ImageTextSet

    out = {}
    for cid in data:
        members = [c for c in data if archs[c] == archs[cid]]
        out[cid] = ImageTextSet(torch.cat([data[c].images for c in members]),
                                torch.cat([data[c].labels for c in members]),
                                [cap for c in members for cap in data[c].captions])
    return out


def averaged_keys(model: nn.Module, private_bn: bool) -> set[str]:
    """State-dict entries ``kt-fedavg`` averages: all of them, or (FedBN, Li et al. ICLR 2021) all but the batch-norm
    layers' weights, biases and running statistics, which then never leave their client."""
    keys = set(model.state_dict())
    if not private_bn:
        return keys
    bn = {f"{name}." for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    return {k for k in keys if not any(k.startswith(p) for p in bn)}


def rank01(x: torch.Tensor) -> torch.Tensor:
    """Ranks scaled to [0, 1] (0 = smallest); ranks make a static and an adaptive difficulty of different
    scales comparable."""
    if len(x) < 2:
        return torch.zeros_like(x, dtype=torch.float32)
    return x.argsort(stable=True).argsort(stable=True).float() / (len(x) - 1)


def curriculum_order(static: torch.Tensor | None, adaptive: torch.Tensor, static_weight: float) -> torch.Tensor:
    """Pool indices easiest first: difficulty = w x rank(static) + (1 - w) x rank(adaptive) (RDTF-style mix of a
    difficulty fixed when the sample was scored and one that follows the learner)."""
    score = (1 - static_weight) * rank01(adaptive)
    if static is not None and static_weight > 0:
        score = score + static_weight * rank01(static)
    return score.argsort(stable=True)


def pace(rnd: int, start: float, rounds: int) -> float:
    """Share of the pool open at round ``rnd``: ``start`` at round 1, growing linearly to 1 at ``rounds``."""
    if rounds <= 1:
        return 1.0
    return min(1.0, start + (1 - start) * (rnd - 1) / (rounds - 1))


def restyle(synthetic: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
    """Per-channel affine map of a synthetic pool onto the private images' pixel statistics: each channel's mean and
    standard deviation over the whole pool become the private set's. One map for the pool, so the differences
    between synthetic images (their colours) survive; only the overall brightness and contrast change."""
    mu_s, sd_s = synthetic.mean((0, 2, 3), keepdim=True), synthetic.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    mu_p, sd_p = private.mean((0, 2, 3), keepdim=True), private.std((0, 2, 3), keepdim=True)
    return ((synthetic - mu_s) / sd_s * sd_p + mu_p).clamp(-1, 1)


def synthetic_factor(rnd: int, rounds: int, ramp: int, end: float) -> float:
    """Weight factor of the synthetic terms at round ``rnd`` of ``rounds``: a linear ramp up over ``ramp`` rounds
    times a linear change from 1 at round 1 to ``end`` at the last round."""
    up = min(1.0, rnd / ramp) if ramp > 0 else 1.0
    down = 1.0 if rounds <= 1 else 1.0 - (1.0 - end) * (rnd - 1) / (rounds - 1)
    return up * down


@contextmanager
def synthetic_bn(model: nn.Module, mode: str):
    """Batch norm while a synthetic batch goes through ``model`` (in train mode outside). ``eval``: private running
    statistics normalise it; ``train``: batch statistics, and they move the running statistics; ``batch``: batch
    statistics, the running statistics untouched (momentum 0), so what normalises test images stays a statistic
    of private data only."""
    if mode == "train":
        yield
        return
    if mode == "eval":
        model.eval()
        try:
            yield
        finally:
            model.train()
        return
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    for m in bns:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, (mom, nbt) in zip(bns, saved):
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


class KTClient:
    """Trains a client's task model on private data (+ distillation, + prototype pull) and
    reports logits and prototypes on the synthetic set. Nothing else leaves it."""

    def __init__(self, cfg: FedMMKTConfig, amp: Amp = FP32_CPU):
        self.cfg, self.amp = cfg, amp

    def train(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
              distill: DistillSet | None, protos: torch.Tensor | None, gen: torch.Generator,
              on_step=None, rnd: int = 1, rounds: int = 1) -> dict[str, float]:
        """``model`` on the compute device; data, prototypes and soft labels arrive on the CPU
        (batch order is drawn there from ``gen``, the same on every device). Each step: cross-entropy on a
        private batch (+ the prototype pull) + the synthetic terms on a synthetic batch drawn from the pool."""
        c, amp = self.cfg, self.amp
        dev = model_device(model)
        opt = torch.optim.AdamW(model.parameters(), lr=c.lr)
        model.train()
        protos = protos.to(dev) if protos is not None else None
        steps, total, syn_total, n = 0, 0.0, 0.0, len(labels)
        planned = c.local_epochs * -(-n // c.batch_size)
        use_kd = distill is not None and distill.soft is not None and c.kd_weight > 0
        use_prompt = distill is not None and distill.labels is not None and c.prompt_weight > 0
        # schedule of the synthetic share: ramp up (the model knows little of its own domain yet), then toward
        # synthetic_end (end on the client's own domain)
        ramp = synthetic_factor(rnd, rounds, c.synthetic_ramp, c.synthetic_end)
        candidates = None
        if use_kd or use_prompt:
            assert distill is not None
            # soft labels alone: only the samples the quality filter kept; prompt labels: all (the prompt's
            # class is a label whatever the ensemble thinks of the sample)
            candidates = (distill.keep.nonzero().flatten() if not use_prompt and distill.keep is not None
                          else torch.arange(len(distill)))
            if not len(candidates):
                candidates = None
        self.last_open: torch.Tensor | None = None
        if candidates is not None and c.synthetic_restyle:
            assert distill is not None
            distill = DistillSet(restyle(distill.images, images), distill.soft, distill.labels, distill.keep)
        for _ in range(c.local_epochs):
            open_idx = candidates
            if candidates is not None and c.curriculum:
                open_idx = self._curriculum(model, distill, candidates, rnd)
            self.last_open = open_idx
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, c.batch_size):
                idx = order[start:start + c.batch_size]
                y = labels[idx].to(dev)
                with amp.autocast():
                    feat, logits = model(images[idx].to(dev))
                    loss = F.cross_entropy(logits.float(), y)
                    if protos is not None and c.proto_weight > 0:
                        loss = loss + c.proto_weight * F.mse_loss(feat.float(), protos[y])
                    if open_idx is not None:
                        assert distill is not None
                        j = open_idx[torch.randint(0, len(open_idx), (min(c.synthetic_batch, len(open_idx)),),
                                                   generator=gen)]
                        # batch norm mode: see synthetic_bn; with train-mode BN the night client's CNN collapsed
                        # to one class (6.7%) at evaluation
                        with synthetic_bn(model, c.synthetic_bn):
                            _, s_logits = model(distill.images[j].to(dev))
                        syn = s_logits.float().sum() * 0.0
                        if use_kd:
                            m = distill.keep[j] if distill.keep is not None else torch.ones(len(j), dtype=torch.bool)
                            if bool(m.any()):
                                syn = syn + c.kd_weight * kd_loss(s_logits.float()[m.to(dev)],
                                                                  distill.soft[j][m].to(dev), c.kd_temperature)
                        if use_prompt:
                            syn = syn + c.prompt_weight * F.cross_entropy(s_logits.float(), distill.labels[j].to(dev))
                        loss = loss + ramp * syn
                        syn_total += syn.item()
                opt.zero_grad(set_to_none=True)
                amp.backward_step(loss, opt)
                steps, total = steps + 1, total + loss.item()
                if on_step is not None:
                    on_step(steps, planned, loss.item())
        if not torch.isfinite(torch.tensor(total)):
            raise FloatingPointError("client training diverged (loss is not finite)")
        return {"train_loss": total / max(steps, 1), "synthetic_loss": syn_total / max(steps, 1), "steps": steps,
                "synthetic_open": 0 if candidates is None or self.last_open is None else len(self.last_open)}

    @torch.no_grad()
    def _curriculum(self, model: torch.nn.Module, pool: DistillSet, candidates: torch.Tensor,
                    rnd: int) -> torch.Tensor:
        """The easiest ``pace(rnd)`` share of ``candidates``. Static difficulty: the ensemble's loss on the prompt
        class when the sample was scored (None before any ensemble); adaptive: this client's loss now."""
        c = self.cfg
        dev = model_device(model)
        target = pool.labels if pool.labels is not None else pool.soft.argmax(1)  # type: ignore[union-attr]
        target = target[candidates]
        losses = []
        # the adaptive loss must not move the running statistics: eval mode, or batch statistics with momentum 0
        mode = "eval" if c.synthetic_bn == "eval" else "batch"
        with synthetic_bn(model, mode):
            for s in range(0, len(candidates), 256):
                k = candidates[s:s + 256]
                with self.amp.autocast():
                    lo = model(pool.images[k].to(dev))[1]
                losses.append(F.cross_entropy(lo.float(), target[s:s + 256].to(dev), reduction="none").cpu())
        adaptive = torch.cat(losses)
        static = None
        if pool.soft is not None:
            static = -pool.soft[candidates].gather(1, target[:, None]).squeeze(1).clamp_min(1e-12).log()
        order = curriculum_order(static, adaptive, c.curriculum_static)
        n_open = max(1, math.ceil(pace(rnd, c.curriculum_start, c.curriculum_rounds) * len(candidates)))
        return candidates[order[:n_open]]

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
    """What the server does each round; the loop (:class:`fedvl.fedmmkt.exchange.KnowledgeServer`)
    reads these flags, nothing else. The default is FedMMKT; each baseline turns parts off."""

    synthetic = True
    """Send a synthetic set, collect logits and prototypes, distil on the ensemble."""
    regenerate = True
    """A new synthetic set every round (else one fixed set from the pretrained generator)."""
    update_generator = True
    """Fine-tune the generator from the clients' feedback."""
    average_weights = False
    """FedAvg of task-model weights within each architecture group (weights travel)."""
    pool_data = False
    """Each client trains on the pooled real data of all clients of its architecture (an upper reference)."""

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


class PooledByArch(LocalOnly):
    pool_data = True


def _kt(name: str, server: type[KTServerRule], summary: str) -> Algorithm:
    # one registry for every algorithm: this family exchanges knowledge, not parameters, and checks its
    # own sections (t2i, fedmmkt); the adapter fields of Algorithm do not apply to its task models
    return register(Algorithm(name, server, KTClient, summary, family="knowledge",
                              check=partial(validate_kt, pools_data=server.pool_data)))


FEDMMKT = _kt("fedmmkt", KTServerRule, "FedMMKT: synthetic set from the server T2I model, ensemble distillation, "
                                      "generator LoRA updated from client feedback + prototype alignment")
KT_DISTILL = _kt("kt-distill", FixedSetDistill,
                 "logit distillation on one fixed synthetic set, generator frozen (FedMD/FedDF style)")
KT_LOCAL = _kt("kt-local", LocalOnly, "each client trains its own task model alone")
KT_FEDAVG = _kt("kt-fedavg", SameArchFedAvg, "FedAvg of task-model weights among clients of the same architecture")
KT_CENTRALIZED = _kt("kt-centralized", PooledByArch,
                     "upper reference: each architecture trained on the pooled real data of its clients")
