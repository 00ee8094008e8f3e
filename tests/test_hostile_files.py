"""Hostile and careless input around the files fedvl writes and reads, through the real CLI:
``--out`` never replaces a user's files unasked, every written file follows the umask, 16-bit
images load as what they show, and unreadable weights, caches and dataset files are named in
one line (or, for a cache, rebuilt)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from kt_fixtures import KT_TINY
from test_hostile import fedvl, one_line, snapshot

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VL = ["model=tiny", "image_size=64", "corpus_images=8", "held_out_images=4", "captions_per_image=2", "steps=2",
      "batch_size=4", "threads=1"]


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def vl_key(cache: Path) -> str:
    from fedvl.models.vlbase import VLPretrainConfig, pretrain_key
    from fedvl.schema import load_section

    return pretrain_key(load_section(VLPretrainConfig, None, [*VL, f"cache_dir={cache}"]))


@pytest.fixture(scope="module")
def vl_cache(tmp_path_factory) -> Path:
    """A cache holding one tiny `fedvl pretrain vl` result (copied by each test that changes it)."""
    cache = tmp_path_factory.mktemp("vl") / "cache"
    r = fedvl("pretrain", "vl", *VL, f"cache_dir={cache}", "--quiet", cwd=cache.parent)
    assert r.returncode == 0, r.stderr
    return cache


def own_cache(vl_cache: Path, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(vl_cache / "vl", cache / "vl")
    return cache


# -- --out: the named file and its reports beside it, nothing else replaced -------------------------------------

def test_pretrain_vl_out_refuses_to_replace_a_users_files_before_any_work(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "weights.json").write_text("my notes")
    (d / "weights.png").write_bytes(b"my picture")
    before = snapshot(tmp_path)
    r = fedvl("pretrain", "vl", *VL, f"cache_dir={tmp_path / 'cache'}", "--out", "d/weights.bin", "--quiet",
              cwd=tmp_path)
    one_line(r, 2, f"--out d/weights.bin would replace d/weights.json, d/weights.png; give --overwrite")
    assert snapshot(tmp_path) == before and not (tmp_path / "cache").exists()
    # a name whose report would be the weights file itself
    r = fedvl("pretrain", "vl", *VL, f"cache_dir={tmp_path / 'cache'}", "--out", "d/w.json", "--quiet", cwd=tmp_path)
    one_line(r, 2, "--out d/w.json: its report would take the same name")
    r = fedvl("pretrain", "vl", *VL, f"cache_dir={tmp_path / 'cache'}", "--out", "d", "--quiet", cwd=tmp_path)
    one_line(r, 2, "--out d is a folder")
    assert snapshot(tmp_path) == before and not (tmp_path / "cache").exists()


def test_pretrain_vl_out_writes_the_named_file_and_prints_it(vl_cache, tmp_path):
    from fedvl.models.vlbase import read_base

    cache = own_cache(vl_cache, tmp_path)
    d = tmp_path / "d"
    d.mkdir()
    (d / "weights.safetensors").write_bytes(b"a user's other model")
    r = fedvl("pretrain", "vl", *VL, f"cache_dir={cache}", "--out", "d/weights.bin", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in d.iterdir()) == ["weights.bin", "weights.json", "weights.png", "weights.safetensors"]
    assert (d / "weights.safetensors").read_bytes() == b"a user's other model"
    assert "model.base_weights=d/weights.bin)" in r.stdout
    state, meta = read_base(d / "weights.bin")  # the printed file is the weights, with their report beside
    assert state and meta["key"] == vl_key(cache)
    mode = 0o666 & ~umask()
    assert all(stat.S_IMODE(p.stat().st_mode) == mode for p in d.glob("weights.[bjp]*"))
    # a second time the files are this command's earlier output, still not replaced unasked
    r = fedvl("pretrain", "vl", *VL, f"cache_dir={cache}", "--out", "d/weights.bin", "--quiet", cwd=tmp_path)
    one_line(r, 2, "would replace d/weights.bin, d/weights.json, d/weights.png")
    (d / "weights.json").write_text("stale")
    r = fedvl("pretrain", "vl", *VL, f"cache_dir={cache}", "--out", "d/weights.bin", "--overwrite", "--quiet",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((d / "weights.json").read_text())["key"] == vl_key(cache)


@pytest.mark.slow
def test_pretrain_t2i_out_writes_the_named_file_and_never_a_users_report(tmp_path):
    args = ["pretrain", "t2i", str(CONFIGS / "fedmmkt.yaml"), *KT_TINY, f"run.cache_dir={tmp_path / 'cache'}",
            "--quiet"]
    d = tmp_path / "d"
    d.mkdir()
    (d / "gen.json").write_text("my notes")
    before = snapshot(tmp_path)
    r = fedvl(*args, "--out", "d/gen.bin", cwd=tmp_path)
    one_line(r, 2, "--out d/gen.bin would replace d/gen.json; give --overwrite")
    assert snapshot(tmp_path) == before and not (tmp_path / "cache").exists()
    r = fedvl(*args, "--out", "d/other.bin", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "t2i.weights=d/other.bin)" in r.stdout
    assert sorted(p.name for p in d.iterdir()) == ["gen.json", "other.bin", "other.json"]
    assert (d / "gen.json").read_text() == "my notes"
    # the written file is what t2i.weights takes; one of another shape is named in one line
    r = fedvl(*args, "t2i.weights=d/other.bin", cwd=tmp_path)
    assert r.returncode == 0 and "generator weights: d/other.bin" in r.stdout, r.stderr
    r = fedvl(*args, "t2i.weights=d/other.bin", "t2i.channels=8,24", cwd=tmp_path)
    one_line(r, 2, "t2i.weights: generator weights d/other.bin do not fit this t2i configuration")


# -- t2i.weights that are no weights ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["pretrain", "run"])
def test_garbage_t2i_weights_are_named_before_a_results_folder(tmp_path, command):
    (tmp_path / "junk.safetensors").write_text("this is not a weights file")
    before = snapshot(tmp_path)
    argv = ["pretrain", "t2i"] if command == "pretrain" else ["run"]
    r = fedvl(*argv, str(CONFIGS / "fedmmkt.yaml"), *KT_TINY, "t2i.weights=junk.safetensors",
              f"run.cache_dir={tmp_path / 'cache'}", f"run.output_dir={tmp_path / 'results'}", "--quiet",
              cwd=tmp_path)
    one_line(r, 2, "t2i.weights: junk.safetensors is not a safetensors weights file")
    assert snapshot(tmp_path) == before and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_damaged_report_beside_t2i_weights_is_named(tmp_path):
    from fedvl.config import load_config
    from fedvl.fedmmkt.generator.pretrain import save_generator
    from fedvl.fedmmkt.generator.t2i import build_generator

    cfg = load_config(str(CONFIGS / "fedmmkt.yaml"), KT_TINY)
    save_generator(build_generator(cfg.t2i), tmp_path / "g.safetensors", {})
    (tmp_path / "g.json").write_bytes(b"{\"loss\": [1.0, ")
    r = fedvl("pretrain", "t2i", str(CONFIGS / "fedmmkt.yaml"), *KT_TINY, "t2i.weights=g.safetensors",
              f"run.cache_dir={tmp_path / 'cache'}", "--quiet", cwd=tmp_path)
    one_line(r, 2, "t2i.weights: the report beside generator weights g.safetensors, g.json, cannot be read")


# -- file modes follow the umask ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_every_file_of_a_run_follows_the_umask(tmp_path, mask):
    r = fedvl("run", *TINY, "algorithm.rounds=1", f"run.output_dir={tmp_path / 'results'}",
              f"run.cache_dir={tmp_path / 'cache'}", "run.name=r", "--quiet", cwd=tmp_path,
              preexec=lambda: os.umask(mask))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "results" / "r"
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
             for p in [run, *run.rglob("*"), *(tmp_path / "cache").rglob("*")]}
    want = {k: (0o777 if (tmp_path / k).is_dir() else 0o666) & ~mask for k in modes}
    assert {"results/r/status.json", "results/r/summary.json", "results/r/checkpoints/round-00001/global.safetensors"} \
        <= modes.keys()
    assert modes == want


# -- 16-bit images ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix, mode", [(".png", "I;16"), (".tif", "I;16"), (".tif", "I")])
def test_sixteen_bit_grey_images_load_as_what_they_show(tmp_path, suffix, mode):
    from PIL import Image

    from fedvl.data.real.encode import check_image, load_image

    px = np.full((24, 24), 0x8000, dtype=np.uint16 if mode == "I;16" else np.int32)
    px[:, :12] = 0x4000  # a quarter grey on the left half, a half grey on the right
    path = tmp_path / f"grey{suffix}"
    Image.fromarray(px).save(path)
    with Image.open(path) as img:
        assert img.mode == mode  # what Pillow opens such a file as
    check_image(path)
    rgb = load_image(path, 24)
    assert rgb.dtype == np.uint8 and rgb.shape == (24, 24, 3)
    assert abs(int(rgb[:, 2:10].mean()) - 64) <= 1 and abs(int(rgb[:, 14:22].mean()) - 128) <= 1


# -- dataset files that are not UTF-8 ------------------------------------------------------------------------------

@pytest.mark.parametrize("client, rel", [
    ("vqav2", "vqav2/v2_OpenEnded_mscoco_train2014_questions.json"),
    ("vqav2", "vqav2/v2_mscoco_train2014_annotations.json"),
    ("gqa", "gqa/questions/train_balanced_questions.json"),
    ("vizwiz", "vizwiz/Annotations/train.json"),
    ("cocoqa", "cocoqa/train/questions.txt"),
    ("aqua", "aqua/train.json"),
    ("clove:attribute", "clove/function/functional_attribute_train.json"),
])
def test_dataset_file_that_is_not_utf8_is_named(tmp_path, client, rel):
    from real_fixtures import write_all

    write_all(tmp_path / "data", n=4)
    path = tmp_path / "data" / rel
    text = path.read_bytes()
    assert b"colo" in text
    path.write_bytes(text.replace(b"colo", "colö".encode("latin-1"), 1))  # a Latin-1 file
    before = snapshot(tmp_path)
    r = fedvl("run", *TINY, "data.benchmark=real", f"data.root={tmp_path / 'data'}", f"data.clients={client}",
              "data.image_size=32", "data.answer_vocab=4", f"run.output_dir={tmp_path / 'results'}",
              f"run.cache_dir={tmp_path / 'cache'}", "--quiet", cwd=tmp_path)
    one_line(r, 2, f"{path} is not UTF-8 text (byte 0xf6 at offset {text.index(b'colo') + 3})")
    assert snapshot(tmp_path) == before and not (tmp_path / "results").exists()


def test_dataset_file_with_a_byte_order_mark_is_read(real_root):
    from fedvl.data.real import SOURCES, parse_source
    from fedvl.schema import DataConfig

    path = real_root / "gqa" / "questions" / "train_balanced_questions.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    fmt, arg = parse_source("gqa")
    assert len(SOURCES[fmt].read(real_root, arg, "train", DataConfig())) == 8


# -- pretraining caches ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["report", "no_report", "weights"])
def test_damaged_vl_cache_is_pretrained_again(vl_cache, tmp_path, damage):
    cache = own_cache(vl_cache, tmp_path)
    weights = cache / "vl" / f"{vl_key(cache)}.safetensors"
    good = json.loads(weights.with_suffix(".json").read_text())
    if damage == "report":
        weights.with_suffix(".json").write_text('{"key": ')
    elif damage == "no_report":
        weights.with_suffix(".json").unlink()
    else:
        weights.write_bytes(b"\x00" * 64)
    r = fedvl("pretrain", "vl", *VL, f"cache_dir={cache}", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"ignoring the damaged cached base {weights}" in r.stdout
    assert weights.read_bytes() == (vl_cache / "vl" / weights.name).read_bytes()  # deterministic: the same base
    assert json.loads(weights.with_suffix(".json").read_text())["held_out_itm_acc"] == good["held_out_itm_acc"]


def test_vl_cache_without_its_curves_draws_them_again(vl_cache, tmp_path):
    cache = own_cache(vl_cache, tmp_path)
    png = cache / "vl" / f"{vl_key(cache)}.png"
    png.unlink()
    r = fedvl("pretrain", "vl", *VL, f"cache_dir={cache}", "--quiet", cwd=tmp_path)
    assert r.returncode == 0 and "already pretrained" in r.stdout, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vl_checkpoint_of_something_else_is_ignored(vl_cache, tmp_path):
    cache = tmp_path / "cache"
    ckpt = cache / "vl" / f"{vl_key(cache)}.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"step": 1, "params": [torch.zeros(3)]}, ckpt)  # loads, but is no checkpoint of this pretraining
    r = fedvl("pretrain", "vl", *VL, f"cache_dir={cache}", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"ignoring the damaged checkpoint {ckpt}; starting over" in r.stdout
    name = f"{vl_key(cache)}.safetensors"
    assert (cache / "vl" / name).read_bytes() == (vl_cache / "vl" / name).read_bytes()
    assert not ckpt.exists()


@pytest.mark.parametrize("what", ["vl", "t2i"])
def test_cache_dir_that_is_a_file_is_named(tmp_path, what):
    (tmp_path / "cachefile").write_text("not a folder")
    argv = [*VL, "cache_dir=cachefile"] if what == "vl" else \
        [str(CONFIGS / "fedmmkt.yaml"), *KT_TINY, "run.cache_dir=cachefile"]
    before = snapshot(tmp_path)
    r = fedvl("pretrain", what, *argv, "--quiet", cwd=tmp_path)
    one_line(r, 2, "cache_dir=cachefile: ")
    assert snapshot(tmp_path) == before
