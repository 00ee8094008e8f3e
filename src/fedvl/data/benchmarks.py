"""Benchmarks: how the synthetic world is split into heterogeneous clients.

Domain (this module, first): one visual domain per client, as FedDAT's Domain
benchmark gives each client one VQA source. Function and Scene mirror FedDAT's
CLOVE-function / CLOVE-scene: one shared domain, and each client differs only in
the kind of question it asks or the kind of scene it sees. Task mirrors FedDAT's
Task benchmark (VQAv2 / NLVR2 / SNLI-VE): one shared domain, and each client has
a different task with its own head and label space. :func:`make_client` makes
any one client from (config, seed, client index) alone, so the simulator can
generate a client's data when it is first sampled (1,000 clients cost the memory
of the few in use).
"""

from __future__ import annotations

import copy
import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np

from fedvl.data.partitioners import dirichlet_label_skew, quantity_skew
from fedvl.data.world import ANSWERS, FUNCTIONS, SCENES, TASKS, Split, make_split, make_task_split
from fedvl.schema import DataConfig


@dataclass
class ClientSplits:
    client_id: str
    train: Split
    test: Split


def _seed(*parts: object) -> int:
    # Stable across processes (unlike hash()), so the world is the same everywhere.
    return zlib.crc32("/".join(map(str, parts)).encode())


def _variant(cfg: DataConfig, k: int) -> str:
    """What makes client k different: its domain, function, composition or task. With
    ``data.cycle_variants`` client k takes variant k mod n (many clients per variant, each
    with its own images: the cross-device setting)."""
    kinds = {"domain": cfg.domains, "function": FUNCTIONS, "scene": list(SCENES), "task": list(TASKS)}[cfg.benchmark]
    return kinds[k % len(kinds)] if cfg.cycle_variants else kinds[k]


def benchmark_client_ids(cfg: DataConfig) -> list[str]:
    """Every client's id without generating any data."""
    return [f"c{k}-{_variant(cfg, k)}" for k in range(cfg.num_clients)]


def benchmark_tasks(cfg: DataConfig) -> set[str]:
    """The tasks present among the clients (the model needs one head per task)."""
    return {_variant(cfg, k) for k in range(min(cfg.num_clients, len(TASKS)))} if cfg.benchmark == "task" else {"vqa"}


def make_client(cfg: DataConfig, seed: int, k: int) -> ClientSplits:
    """Generate client k of a natural benchmark; depends only on (cfg, seed, k), so a client's
    data can be made on demand, in any order, in any process.

    Domain: one visual domain per client. Function (FedDAT's CLOVE-function): client k asks
    only one question function, all in ``cfg.function_domain``, so the heterogeneity is
    purely in the questions and their answer sets. Scene (CLOVE-scene): every function,
    but only scenes of one composition (count, layout, palette, shapes) in
    ``cfg.scene_domain``. Task (VQAv2 / NLVR2 / SNLI-VE): one task (vqa, itm, entail) per
    client, each with its own label space (``Split.task``), in ``cfg.task_domain``.
    """
    return ClientSplits(f"c{k}-{_variant(cfg, k)}", make_client_split(cfg, seed, k, "train"),
                        make_client_split(cfg, seed, k, "test"))


def make_client_split(cfg: DataConfig, seed: int, k: int, which: str) -> Split:
    """One split (``train`` or ``test``) of client k (see :func:`make_client`)."""
    v, b = _variant(cfg, k), cfg.benchmark
    n = {"train": cfg.train_images, "test": cfg.test_images}[which]
    s = _seed(seed, b, k, v, which)
    if b == "task":
        return make_task_split(v, cfg.task_domain, n, cfg.questions_per_image, cfg.image_size, s, cfg.max_objects)
    if b == "domain":
        return make_split(v, n, cfg.questions_per_image, cfg.image_size, FUNCTIONS, s, cfg.max_objects)
    if b == "function":
        return make_split(cfg.function_domain, n, cfg.questions_per_image, cfg.image_size, [v], s, cfg.max_objects)
    return make_split(cfg.scene_domain, n, cfg.questions_per_image, cfg.image_size, FUNCTIONS, s, cfg.max_objects,
                      composition=v)


def _subset(split: Split, sample_idx: np.ndarray) -> Split:
    sub = copy.copy(split)
    sub.samples = [split.samples[i] for i in sample_idx]
    return sub


def _concat(splits: list[Split]) -> Split:
    images = np.concatenate([s.images for s in splits])
    scenes = [sc for s in splits for sc in s.scenes]
    out = Split(domain="+".join(sorted({s.domain for s in splits})), images=images, scenes=scenes)
    offset = 0
    for s in splits:
        for smp in s.samples:
            out.samples.append(dataclasses.replace(smp, image=smp.image + offset))
        offset += len(s.images)
    return out


def repartition(clients: list[ClientSplits], cfg: DataConfig, seed: int) -> list[ClientSplits]:
    """Pool the training samples and re-split them with a label- or quantity-skew partitioner.

    Test splits are re-split the same way so each client is evaluated on the
    distribution it trains on (personalised evaluation).
    """
    if cfg.partition == "natural":
        return clients
    out_train, out_test = [], []
    for which in ("train", "test"):
        pooled = _concat([getattr(c, which) for c in clients])
        if cfg.partition == "dirichlet":
            parts = dirichlet_label_skew(pooled.labels, len(clients), cfg.dirichlet_alpha, _seed(seed, which))
        else:
            parts = quantity_skew(len(pooled.samples), len(clients), cfg.quantity_alpha, _seed(seed, which))
        (out_train if which == "train" else out_test).extend(_subset(pooled, p) for p in parts)
    return [ClientSplits(f"c{k}-{cfg.partition}", tr, te) for k, (tr, te) in enumerate(zip(out_train, out_test))]


def build_benchmark(cfg: DataConfig, seed: int) -> list[ClientSplits]:
    """Every client's splits, generated now (the partitioners need the pooled data)."""
    return repartition([make_client(cfg, seed, k) for k in range(cfg.num_clients)], cfg, seed)


NUM_ANSWERS = len(ANSWERS)
