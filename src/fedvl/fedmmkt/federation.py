"""The knowledge-transfer family (FedMMKT and its baselines): its federation and server steps.

Clients here hold task models of their own architectures, so nothing like a shared
global model exists: what travels up is logits and prototypes on the synthetic set
(or, for ``kt-fedavg`` only, weights within an architecture group). This module builds
such a federation and holds the server's pieces of a round; the round itself is
:func:`fedvl.rounds.loop.run_rounds` with :mod:`fedvl.fedmmkt.exchange`'s two sides.
Client task models live on disk between rounds (:class:`ClientStateStore`); randomness
is derived from (seed, purpose, round, client).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedvl.algorithms import get_algorithm
from fedvl.algorithms.aggregate import UpdateRejected
from fedvl.fedmmkt.algorithms import (
    DistillSet,
    KTClient,
    KTServerRule,
    alignment_loss,
    feedback_select,
    pool_by_arch,
)
from fedvl.engine.device import FP32_CPU, Amp, DeviceError, amp_for
from fedvl.fedmmkt.generator.judge import fidelity, judge_outputs, train_judge
from fedvl.fedmmkt.generator.t2i import Sampling, T2IGenerator
from fedvl.fedmmkt.data import ImageTextSet, class_names, make_set, prompt
from fedvl.fedmmkt.task_models import build_task_model
from fedvl.rounds.state import ClientStateStore
from fedvl.schema import ConfigError, ExperimentConfig
from fedvl.seeding import derived_seed


@dataclass
class KTFederation:
    cfg: ExperimentConfig
    server: KTServerRule
    client: KTClient
    classes: list[str]
    train: dict[str, ImageTextSet]
    test: dict[str, ImageTextSet]
    archs: dict[str, str]
    """Every client's task-model architecture, keyed by client id (all clients, also where only
    some clients' data were built)."""
    store: ClientStateStore | None
    """The run folder's client states (in process and Flower simulation: the nodes write them, the
    server's checkpoints link them); None where no run folder is kept (a deployed node's build)."""
    generator: T2IGenerator | None = None
    judge: torch.nn.Module | None = None
    judge_real: torch.Tensor | None = None  # judge features of held-out real client-domain images
    align_head: torch.nn.Module | None = None
    gen_opt: torch.optim.Optimizer | None = None
    pretrain_meta: dict = field(default_factory=dict)
    amp: Amp = FP32_CPU
    """run.device / run.precision: the generator, the alignment head and (one at a time) the
    task models compute there; client state, reports and the server's tensors stay on the CPU."""

    @property
    def client_ids(self) -> list[str]:
        """Every client of the run, in order, whichever of them this process holds data of."""
        return list(self.archs)

    def close(self) -> None:
        """Nothing runs beside this process (its task models train here: no run.client_procs)."""


@dataclass
class ServerState:
    """What the server carries from one round to the next."""

    synthetic: ImageTextSet | None = None
    distill: DistillSet | None = None
    protos: torch.Tensor | None = None
    seen: torch.Tensor | None = None
    samples: dict[str, torch.Tensor] = field(default_factory=dict)  # eval images of the first and last round


def client_ids_from(kt) -> list[str]:
    """The client ids a FedMMKT config describes, one per (domain, architecture), in order."""
    return [f"c{i}-{d}-{a}" for i, (d, a) in enumerate(zip(kt.domains, kt.archs))]


def build(cfg: ExperimentConfig, run_dir: Path | None, status=print, on_pretrain_step=None,
          clients: list[int] | None = None, server: bool = True) -> KTFederation:
    """The clients' data and, with ``server``, the server's pieces: the fidelity judge and, if the
    strategy uses one, the pretrained generator.

    ``clients``: the partitions whose data to build (None: every one; ``[]``: none, the server of
    a deployment or of Ray workers); ``server=False``: a node's build (a deployed node, a Ray
    worker), which neither generates nor judges."""
    torch.set_num_threads(cfg.run.threads)
    try:
        amp = amp_for(cfg.run.device, cfg.run.precision)
    except DeviceError as e:
        raise ConfigError(str(e)) from None
    kt, seed = cfg.fedmmkt, cfg.run.seed
    classes = class_names(kt.colors, kt.shapes)
    size = cfg.t2i.image_size
    algo = get_algorithm(cfg.algorithm.name)
    strategy = algo.server(cfg)
    ids = client_ids_from(kt)
    held = [(cid, d) for i, (cid, d) in enumerate(zip(ids, kt.domains)) if clients is None or i in clients]
    if held:
        status(f"making {len(held)} client(s)' private image-text data ({len(classes)} classes)")
    train = {cid: make_set(classes, d, kt.train_per_class, size, derived_seed(seed, "kt-train", cid))
             for cid, d in held}
    test = {cid: make_set(classes, d, kt.test_per_class, size, derived_seed(seed, "kt-test", cid))
            for cid, d in held}
    if strategy.pool_data:  # every client's data is here (fedmmkt/validate.py keeps this off a deployment)
        train = pool_by_arch(train, dict(zip(ids, kt.archs)))
    fed = KTFederation(cfg, strategy, algo.client(kt, amp), classes, train, test, dict(zip(ids, kt.archs)),
                       ClientStateStore(run_dir / "client_states") if run_dir is not None else None, amp=amp)
    if strategy.synthetic and server:
        from fedvl.fedmmkt.generator.pretrain import load_or_pretrain

        fed.generator, fed.pretrain_meta = load_or_pretrain(cfg.t2i, kt, Path(cfg.run.cache_dir), status,
                                                            on_pretrain_step, device=amp.device)
        if fed.generator.image_size != size:
            raise ConfigError(f"t2i.source={cfg.t2i.source} generates {fed.generator.image_size} px images; set "
                              f"t2i.image_size={fed.generator.image_size} so the clients' data has the same size")
        status("training the fidelity judge on held-out real client-domain images")
        held = [make_set(classes, d, kt.judge_per_class, size, derived_seed(seed, "kt-judge", d))
                for d in dict.fromkeys(kt.domains)]
        images, labels = torch.cat([h.images for h in held]), torch.cat([h.labels for h in held])
        fed.judge = train_judge(images, labels, len(classes), derived_seed(seed, "judge"))
        fed.judge_real = judge_outputs(fed.judge, images)[0]
        if strategy.update_generator:
            gen = fed.generator
            gen.add_lora(cfg.t2i.lora_rank, cfg.t2i.lora_targets)
            torch.manual_seed(derived_seed(seed, "align-head"))
            fed.align_head = torch.nn.Linear(gen.cond.dim, kt.proto_dim).to(amp.device)
            gen.set_trainable(gen.federated_names())
            params = [p for p in gen.parameters() if p.requires_grad] + list(fed.align_head.parameters())
            fed.gen_opt = torch.optim.AdamW(params, lr=cfg.t2i.lr)
        else:
            fed.generator.set_trainable([])
    return fed


def task_model(fed: KTFederation, cid: str, store: ClientStateStore | None = None) -> torch.nn.Module:
    """A client's task model on the compute device (one at a time): its saved state in ``store``
    (by default the run folder's), or before its first round the initial weights its seed gives,
    built on the CPU, so they are the same on every node and device."""
    kt = fed.cfg.fedmmkt
    model = build_task_model(fed.archs[cid], len(fed.classes), fed.cfg.t2i.image_size, kt.proto_dim,
                             derived_seed(fed.cfg.run.seed, "task-model", cid))
    store = store if store is not None else fed.store
    state = store.load(cid) if store is not None else None
    if state is not None:
        model.load_state_dict(state)
    return model.to(fed.amp.device)


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A task model's state as CPU tensors: device-free on disk, averaged on the CPU (kt-fedavg)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def generate(fed: KTFederation, per_class: int, seed: int) -> ImageTextSet:
    labels = torch.arange(len(fed.classes)).repeat(per_class)
    captions = [prompt(fed.classes[k]) for k in labels.tolist()]
    t = fed.cfg.t2i
    with fed.amp.autocast():
        images = fed.generator.sample(captions, Sampling(t.sample_steps, t.guidance, t.sample_batch),
                                      torch.Generator().manual_seed(seed))
    return ImageTextSet(images, labels, captions)


def check_report(msg: Any, n: int, classes: int, dim: int) -> None:
    """What a client sends must be exactly logits (n, C), prototypes (C, D) and counts (C,), finite."""
    want = {"logits": (n, classes), "protos": (classes, dim), "proto_counts": (classes,)}
    if not isinstance(msg, dict) or set(msg) != set(want):
        raise UpdateRejected(f"expected keys {sorted(want)}, got {sorted(msg) if isinstance(msg, dict) else type(msg)}")
    for k, shape in want.items():
        v = msg[k]
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != shape:
            raise UpdateRejected(f"{k}: expected a tensor of shape {shape}")
        if not bool(torch.isfinite(v).all()):
            raise UpdateRejected(f"{k}: NaN or Inf")


def update_generator(fed: KTFederation, synthetic: ImageTextSet, keep: torch.Tensor, probs: torch.Tensor,
                     state: ServerState, rnd: int) -> dict[str, float]:
    """Feedback-weighted denoising on the accepted samples + prototype alignment of the text side."""
    t, kt, gen = fed.cfg.t2i, fed.cfg.fedmmkt, fed.generator
    keep = feedback_select(probs, synthetic.labels, keep, kt.feedback_top)
    idx = keep.nonzero().flatten()
    weights = probs[idx, synthetic.labels[idx]]  # how strongly the clients recognise the prompt's class
    g = torch.Generator().manual_seed(derived_seed(fed.cfg.run.seed, "gen-update", rnd))
    class_prompts = [prompt(c) for c in fed.classes]
    gen.train()
    amp, dev = fed.amp, gen.device
    total_d, total_a = 0.0, 0.0
    for _ in range(t.server_steps):
        loss = torch.zeros((), device=dev)
        with amp.autocast():
            if len(idx):
                j = idx[torch.randint(0, len(idx), (min(t.server_batch, len(idx)),), generator=g)]
                w = probs[j, synthetic.labels[j]]
                d = gen.loss(synthetic.images[j], [synthetic.captions[i] for i in j.tolist()], weights=w,
                             cond_dropout=t.cond_dropout, generator=g).float()
                loss, total_d = loss + d, total_d + d.item()
            if kt.align_weight > 0 and state.protos is not None:
                _, _, pooled = gen.cond(class_prompts)
                a = alignment_loss(fed.align_head(pooled).float(), state.protos.to(dev), state.seen.to(dev),
                                   kt.align_temperature)
                loss, total_a = loss + kt.align_weight * a, total_a + a.item()
        if not loss.requires_grad:
            break
        fed.gen_opt.zero_grad(set_to_none=True)
        amp.backward_step(loss, fed.gen_opt)
    steps = max(t.server_steps, 1)
    return {"denoise_loss": total_d / steps, "align_loss": total_a / steps, "accepted": len(idx),
            "feedback_weight": float(weights.mean()) if len(idx) else 0.0}


def average_by_arch(archs: dict[str, str], states: dict[str, dict[str, torch.Tensor]],
                    counts: dict[str, int]) -> dict[str, dict[str, torch.Tensor]]:
    """kt-fedavg: FedAvg of the task-model weights within each architecture (``archs``: client ->
    architecture), weighted by the training-set size each client reported (``counts``); returns
    the average of each architecture, which goes down to its clients."""
    groups: dict[str, list[str]] = defaultdict(list)
    averaged: dict[str, dict[str, torch.Tensor]] = {}
    for cid in states:
        groups[archs[cid]].append(cid)
    for members in groups.values():
        n = torch.tensor([float(counts[c]) for c in members])
        w = n / n.sum()
        # what the clients sent: every entry, or (FedBN) all but their batch-norm layers, which they keep
        avg = {k: sum(w[i] * states[c][k].double() for i, c in enumerate(members)).to(states[members[0]][k].dtype)
               for k in states[members[0]]}
        averaged[archs[members[0]]] = avg
    return averaged


def eval_generator(fed: KTFederation) -> tuple[dict[str, float], ImageTextSet]:
    kt = fed.cfg.fedmmkt
    # the same noise every round: the change in the scores is the generator's, not the draw's
    imgs = generate(fed, kt.eval_per_class, derived_seed(fed.cfg.run.seed, "eval-noise"))
    return fidelity(fed.judge, imgs.images, imgs.labels, fed.judge_real), imgs
