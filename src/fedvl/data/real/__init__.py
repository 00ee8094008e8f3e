"""Real VQA datasets read from their own file formats (``data.benchmark=real``).

Each client reads one *source*, named in ``data.clients`` as ``FORMAT[:ARG]``:

=============  =========================================  ======================  ============
FORMAT         what                                       ARG (default)           train / test
=============  =========================================  ======================  ============
``vqav2``      VQAv2 questions + annotations JSON         folder (``vqav2``)      train / val
``abstract``   VQA Abstract Scenes (same format)          folder (``abstract``)   train / val
``vizwiz``     VizWiz-VQA JSON                            folder (``vizwiz``)     train / val
``gqa``        GQA balanced question files                folder (``gqa``)        train / val
``cocoqa``     COCO-QA text files                         folder (``cocoqa``)     train / test
``aqua``       AQUA JSON (art, SemArt images)             folder (``aqua``)       train / test
``clove``      CLOVE-function / CLOVE-scene JSON          stage (required)        train / val
``folder``     your own data in the VQAv2 format          folder (required)       train / val
=============  =========================================  ======================  ============

Folders are relative to ``data.root``; CLOVE always reads ``<root>/clove``. The
FedDAT Domain benchmark is ``data.clients=aqua,abstract,vizwiz,cocoqa,gqa``.
Layouts and download steps: docs/datasets.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedvl.data.real import aqua, clove, cocoqa, gqa, vizwiz, vqa
from fedvl.data.real.answers import majority_answer, top_k_vocab
from fedvl.data.real.base import DOCS, DatasetError, Question
from fedvl.data.real.splits import RealSplit, make_split
from fedvl.schema import DataConfig

Reader = Callable[[Path, str, str, DataConfig], list[Question]]


@dataclass(frozen=True)
class Source:
    default_arg: str  # "" = ARG required
    splits: tuple[str, str]  # (train, test) split names in the source's files
    read: Reader  # (root, arg, split, cfg) -> questions
    arg_is_folder: bool = True


SOURCES: dict[str, Source] = {
    "vqav2": Source("vqav2", ("train", "val"), lambda root, arg, s, cfg: vqa.read("vqav2", root / arg, s)),
    "abstract": Source("abstract", ("train", "val"), lambda root, arg, s, cfg: vqa.read("abstract", root / arg, s)),
    "folder": Source("", ("train", "val"), lambda root, arg, s, cfg: vqa.read("folder", root / arg, s)),
    "vizwiz": Source("vizwiz", ("train", "val"), lambda root, arg, s, cfg: vizwiz.read(root / arg, s)),
    "gqa": Source("gqa", ("train", "val"), lambda root, arg, s, cfg: gqa.read(root / arg, s)),
    "cocoqa": Source("cocoqa", ("train", "test"), lambda root, arg, s, cfg: cocoqa.read(root / arg, s)),
    "aqua": Source("aqua", ("train", "test"), lambda root, arg, s, cfg: aqua.read(root / arg, s, cfg.aqua_knowledge)),
    "clove": Source("", ("train", "val"), lambda root, arg, s, cfg: clove.read(root / "clove", arg, s),
                    arg_is_folder=False),
}


def parse_source(spec: str) -> tuple[str, str]:
    """``"cocoqa"`` -> ("cocoqa", "cocoqa"); ``"clove:object"`` -> ("clove", "object")."""
    fmt, _, arg = spec.partition(":")
    if fmt not in SOURCES:
        raise DatasetError(f"data.clients: unknown source format {fmt!r} in {spec!r} "
                           f"(formats: {', '.join(SOURCES)}; see {DOCS})")
    arg = arg or SOURCES[fmt].default_arg
    if not arg:
        raise DatasetError(f"data.clients: {spec!r} needs an argument, e.g. {fmt}:" +
                           ("object" if fmt == "clove" else "my_data"))
    return fmt, arg


def client_id(k: int, spec: str) -> str:
    return f"c{k}-" + spec.replace(":", "-").replace("/", "-")


def check_sources(cfg: DataConfig) -> None:
    """Fail fast, before a results folder exists: root and every client's folder must exist."""
    root = Path(cfg.root)
    if not cfg.root or not root.is_dir():
        raise DatasetError(f"data.root={cfg.root!r} is not a directory (data.benchmark=real reads the datasets "
                           f"from there; layout: {DOCS})")
    for spec in cfg.clients:
        fmt, arg = parse_source(spec)
        folder = root / (arg if SOURCES[fmt].arg_is_folder else "clove")
        if not folder.is_dir():
            raise DatasetError(f"data.clients: {spec!r} reads {folder}, which is not a directory (layout: {DOCS})")


def _subsample(questions: list[Question], cap: int, seed: int) -> list[Question]:
    if cap <= 0 or len(questions) <= cap:
        return questions
    keep = np.sort(np.random.default_rng(seed).permutation(len(questions))[:cap])
    return [questions[i] for i in keep]


@dataclass
class RealClient:
    client_id: str
    train: RealSplit
    test: RealSplit


def build_real_benchmark(cfg: DataConfig, seed: int) -> list[RealClient]:
    """One client per entry of ``cfg.clients``, each with its own top-K answer vocabulary.

    ``cfg.vocab_scope=shared``: every client's labels index the union of the
    clients' top-K lists instead (so a head can be averaged across clients).
    """
    check_sources(cfg)
    root = Path(cfg.root)
    parsed = []
    for k, spec in enumerate(cfg.clients):
        fmt, arg = parse_source(spec)
        src = SOURCES[fmt]
        train_split, test_split = src.splits
        train = _subsample(src.read(root, arg, train_split, cfg), cfg.max_train_questions, seed + 2 * k)
        test = _subsample(src.read(root, arg, test_split, cfg), cfg.max_test_questions, seed + 2 * k + 1)
        if not train or not test:
            raise DatasetError(f"data.clients: {spec!r} has {len(train)} training and {len(test)} test questions")
        vocab = top_k_vocab([majority_answer(q.answers) for q in train], cfg.answer_vocab)
        parsed.append((client_id(k, spec), spec, train, test, vocab))
    from fedvl.data.real.encode import check_image

    for *_, train, test, _ in parsed:  # every image's header, before any is decoded or anything written
        for image in dict.fromkeys(q.image for q in train + test):
            check_image(image)
    if cfg.vocab_scope == "shared":
        union = list(dict.fromkeys(a for *_, vocab in parsed for a in vocab))
        parsed = [(cid, spec, tr, te, union) for cid, spec, tr, te, _ in parsed]
    return [RealClient(cid, make_split(spec, tr, vocab, keep_unlabelled=False),
                       make_split(spec, te, vocab, keep_unlabelled=True)) for cid, spec, tr, te, vocab in parsed]
