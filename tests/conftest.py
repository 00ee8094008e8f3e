"""Shared fixtures: tiny models and tiny data, made by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)  # tests are tiny; one thread avoids oversubscription on shared CI cores

from fedvl.config import load_config  # noqa: E402

TINY = [
    "model.name=tiny",
    "data.train_images=12",
    "data.test_images=8",
    "data.image_size=64",
    "algorithm.rounds=2",
    "algorithm.batch_size=8",
    "algorithm.lr=0.005",
    "run.threads=1",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    return TINY + [f"run.output_dir={tmp_path / 'results'}", f"run.cache_dir={tmp_path / 'cache'}"]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    def make(*extra: str):
        return load_config(None, tiny_overrides + list(extra))

    return make


@pytest.fixture
def real_root(tmp_path):
    """A folder with every supported real dataset format, 8 questions per split (tests/real_fixtures.py)."""
    from real_fixtures import write_all

    root = tmp_path / "data"
    write_all(root)
    return root


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.cuda`` tests run only where torch sees a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_vl_base(tmp_path_factory):
    """A VL base for the tiny model (two steps of `fedvl pretrain vl` on 8 images, seconds): runs on it
    freeze the connector as the default model's shipped base does (model.base=vl)."""
    from fedvl.models.vlbase import VLPretrainConfig
    from fedvl.pretrain.vl import pretrain

    cfg = VLPretrainConfig(model="tiny", image_size=64, corpus_images=8, held_out_images=4, captions_per_image=2,
                           steps=2, batch_size=4, threads=1, cache_dir=str(tmp_path_factory.mktemp("vlbase")))
    return pretrain(cfg, status=lambda s: None)[0]


@pytest.fixture(scope="session")
def vlm_checkpoint(tmp_path_factory):
    """family -> a tiny generative VLM checkpoint directory (tests/vlm_fixtures.py), built once per session."""
    from vlm_fixtures import build

    made: dict[str, Path] = {}

    def get(family: str = "llava") -> Path:
        if family not in made:
            made[family] = build(family, tmp_path_factory.mktemp(f"vlm-{family}"))
        return made[family]

    return get


def vlm_overrides(checkpoint, tmp_path, *extra: str) -> list[str]:
    """A tiny hf-vlm run: the TINY data on 32-pixel images, LoRA on the query and value projections."""
    return ["model.name=hf-vlm", f"model.checkpoint={checkpoint}", "model.peft=lora", "model.max_new_tokens=6",
            "data.train_images=12", "data.test_images=8", "data.image_size=32", "algorithm.rounds=2",
            "algorithm.batch_size=8", "algorithm.lr=0.05", "run.threads=1",
            f"run.output_dir={tmp_path / 'results'}", f"run.cache_dir={tmp_path / 'cache'}", *extra]
