"""Benchmarks: how the synthetic world is split into heterogeneous clients.

Domain (this module, first): one visual domain per client, as FedDAT's Domain
benchmark gives each client one VQA source. Function and Scene mirror FedDAT's
CLOVE-function / CLOVE-scene: one shared domain, and each client differs only in
the kind of question it asks or the kind of scene it sees. Task mirrors FedDAT's
Task benchmark (VQAv2 / NLVR2 / SNLI-VE): one shared domain, and each client has
a different task with its own head and label space. Every benchmark is a
function returning one :class:`ClientSplits` per client.
"""

from __future__ import annotations

import copy
import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np

from fedvl.config import DataConfig
from fedvl.data.partitioners import dirichlet_label_skew, quantity_skew
from fedvl.data.world import ANSWERS, FUNCTIONS, SCENES, TASKS, Split, make_split, make_task_split


@dataclass
class ClientSplits:
    client_id: str
    train: Split
    test: Split


def _seed(*parts: object) -> int:
    # Stable across processes (unlike hash()), so the world is the same everywhere.
    return zlib.crc32("/".join(map(str, parts)).encode())


def domain_benchmark(cfg: DataConfig, seed: int) -> list[ClientSplits]:
    clients = []
    for k in range(cfg.num_clients):
        dom = cfg.domains[k]
        cid = f"c{k}-{dom}"
        train = make_split(dom, cfg.train_images, cfg.questions_per_image, cfg.image_size, FUNCTIONS,
                           _seed(seed, "domain", k, dom, "train"), cfg.max_objects)
        test = make_split(dom, cfg.test_images, cfg.questions_per_image, cfg.image_size, FUNCTIONS,
                          _seed(seed, "domain", k, dom, "test"), cfg.max_objects)
        clients.append(ClientSplits(cid, train, test))
    return clients


def function_benchmark(cfg: DataConfig, seed: int) -> list[ClientSplits]:
    """Client k asks only FUNCTIONS[k] questions, all in ``cfg.function_domain``.

    The pixels come from one distribution, so the heterogeneity is purely in the
    questions and their answer sets (FedDAT's CLOVE-function).
    """
    dom = cfg.function_domain
    clients = []
    for k in range(cfg.num_clients):
        fn = FUNCTIONS[k]
        cid = f"c{k}-{fn}"
        train = make_split(dom, cfg.train_images, cfg.questions_per_image, cfg.image_size, [fn],
                           _seed(seed, "function", k, fn, "train"), cfg.max_objects)
        test = make_split(dom, cfg.test_images, cfg.questions_per_image, cfg.image_size, [fn],
                          _seed(seed, "function", k, fn, "test"), cfg.max_objects)
        clients.append(ClientSplits(cid, train, test))
    return clients


def scene_benchmark(cfg: DataConfig, seed: int) -> list[ClientSplits]:
    """Client k sees only scenes of the k-th composition in SCENES, all in ``cfg.scene_domain``.

    Every client asks every function; what differs is what the scenes contain
    (count, layout, palette, shapes), as FedDAT's CLOVE-scene.
    """
    dom = cfg.scene_domain
    names = list(SCENES)
    clients = []
    for k in range(cfg.num_clients):
        comp = names[k]
        cid = f"c{k}-{comp}"
        train = make_split(dom, cfg.train_images, cfg.questions_per_image, cfg.image_size, FUNCTIONS,
                           _seed(seed, "scene", k, comp, "train"), cfg.max_objects, composition=comp)
        test = make_split(dom, cfg.test_images, cfg.questions_per_image, cfg.image_size, FUNCTIONS,
                          _seed(seed, "scene", k, comp, "test"), cfg.max_objects, composition=comp)
        clients.append(ClientSplits(cid, train, test))
    return clients


def task_benchmark(cfg: DataConfig, seed: int) -> list[ClientSplits]:
    """Client k does the k-th task of TASKS (vqa, itm, entail), all in ``cfg.task_domain``.

    Every task has its own label space (``Split.task`` names it), so each client
    needs its own head (FedDAT's Task benchmark: VQAv2 / NLVR2 / SNLI-VE).
    """
    dom = cfg.task_domain
    clients = []
    for k in range(cfg.num_clients):
        task = list(TASKS)[k]
        cid = f"c{k}-{task}"
        train = make_task_split(task, dom, cfg.train_images, cfg.questions_per_image, cfg.image_size,
                                _seed(seed, "task", k, task, "train"), cfg.max_objects)
        test = make_task_split(task, dom, cfg.test_images, cfg.questions_per_image, cfg.image_size,
                               _seed(seed, "task", k, task, "test"), cfg.max_objects)
        clients.append(ClientSplits(cid, train, test))
    return clients


BENCHMARKS = {"domain": domain_benchmark, "function": function_benchmark, "scene": scene_benchmark,
              "task": task_benchmark}


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
    return repartition(BENCHMARKS[cfg.benchmark](cfg, seed), cfg, seed)


NUM_ANSWERS = len(ANSWERS)
