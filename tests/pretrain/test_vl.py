"""VL pretraining (``fedvl pretrain vl``) and the VL base: corpus, determinism, resume, merge, what trains."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from fedvl.config import load_config
from fedvl.data.captions import KINDS, NUMBERS, ROWS, _left_of, describe, make_corpus
from fedvl.data.world import COLUMNS, SHAPES, Obj, random_scene
from fedvl.models.backbones import ModelUnavailableError, build_model
from fedvl.models.params import trainable_names
from fedvl.models.vlbase import VLPretrainConfig, pretrain_key, read_base
from fedvl.schema import ModelConfig

TINY_PRE = dict(model="tiny", image_size=64, corpus_images=24, held_out_images=6, captions_per_image=2, steps=4,
                batch_size=8, threads=1, checkpoint_every=1, eval_every=2)


# ----------------------------------------------------------------- the corpus

_OBJ = r"an? (small|large) (\w+) (\w+) at the (top|center|bottom) (left|middle|right)"


def _truth(scene: list[Obj], text: str) -> bool:
    """Decide a caption from the scene alone (an independent reading of the templates)."""
    objs = {(o.size, o.color, o.shape, o.row, o.col) for o in scene}

    def obj(m):
        return (m[0], m[1], m[2], ROWS.index(m[3]), COLUMNS.index(m[4]))

    if m := re.fullmatch(r"there is " + _OBJ, text):
        return obj(m.groups()) in objs
    if m := re.fullmatch(r"there (?:is|are) (\w+) (\w+) objects?", text):
        return NUMBERS.index(m[1]) == sum(o.color == m[2] for o in scene)
    if m := re.fullmatch(r"there (?:is|are) (\w+) (\w+)", text):
        shape = {s: s for s in SHAPES} | {"circles": "circle", "squares": "square", "triangles": "triangle",
                                          "diamonds": "diamond", "crosses": "cross"}
        return NUMBERS.index(m[1]) == sum(o.shape == shape[m[2]] for o in scene)
    if m := re.fullmatch(r"an? (\w+) (\w+) left of an? (\w+) (\w+)", text):
        return _left_of(scene, Obj(m[2], m[1], "small", 0, 0), Obj(m[4], m[3], "small", 0, 0))
    parts = re.findall(_OBJ, text)
    assert parts, text
    return len(parts) == len(scene) and {obj(p) for p in parts} == objs


@pytest.mark.parametrize("count_negatives", ["uniform", "matched"])
def test_every_caption_is_true_and_every_hard_negative_false(count_negatives):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        scene = random_scene(rng, 1, 4)
        for kind in KINDS:
            for negative in (False, True):
                text = describe(scene, kind, negative, rng, count_negatives)
                assert _truth(scene, text) is (not negative), (scene, kind, text)
                seen.add(text.split()[0])
    assert {"there", "a", "an"} <= seen


def test_corpus_is_seeded_half_negative_and_never_asks():
    a, b = make_corpus(40, 3, 64, seed=5), make_corpus(40, 3, 64, seed=5)
    assert np.array_equal(a.images, b.images) and a.text == b.text
    assert 0.35 < sum(a.match) / len(a.match) < 0.65
    assert not any("?" in t for t in a.text)  # captions describe; benchmark questions never appear
    assert len(a.text) == 120 and max(a.image) == 39


def _match_rate_by_number(count_negatives: str) -> dict[str, float]:
    corpus = make_corpus(1500, 4, 32, seed=7, max_objects=3, count_negatives=count_negatives)
    seen: dict[str, list[int]] = {}
    for text, match, kind in zip(corpus.text, corpus.match, corpus.kind):
        if kind == "count":
            seen.setdefault(text.split()[2], []).append(match)
    return {w: sum(m) / len(m) for w, m in seen.items() if len(m) >= 50}


def test_matched_count_negatives_leave_the_number_word_uninformative():
    """A text-only reader of a count caption: under ``uniform`` (the shipped base's corpus) the number
    word nearly decides the label ("no" true 89%, "three"/"four" true 0-1%); under ``matched`` every
    frequent number word is true about half the time, so only the image can tell."""
    uniform, matched = _match_rate_by_number("uniform"), _match_rate_by_number("matched")
    assert uniform["no"] > 0.8 and uniform["four"] < 0.05
    assert matched.keys() >= {"no", "one", "two"} and all(0.4 < r < 0.6 for r in matched.values())


def test_count_negatives_option_changes_the_key():
    a, b = VLPretrainConfig(count_negatives="uniform"), VLPretrainConfig(count_negatives="matched")
    assert pretrain_key(a) != pretrain_key(b)  # (a base made before the option existed: see the first base)


# ----------------------------------------------------------- pretraining


def _pretrain(tmp_path, name: str, **kw):
    from fedvl.pretrain.vl import pretrain

    cfg = VLPretrainConfig(**{**TINY_PRE, **kw, "cache_dir": str(tmp_path / name)})
    return pretrain(cfg, status=lambda s: None)


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_pretraining_is_deterministic_and_writes_report_and_curves(tmp_path):
    path_a, meta = _pretrain(tmp_path, "a")
    path_b, _ = _pretrain(tmp_path, "b")
    a, b = _tensors(path_a), _tensors(path_b)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float16 for v in a.values())
    assert {k.split(".")[0] for k in a} == {"connector", "text", "delta", "itm", "mlm"}
    # the delta covers every Linear of the text layers (query, key, value and the three dense)
    assert len([k for k in a if k.startswith("delta.") and k.endswith(".A")]) == 2 * 6
    report = json.loads(path_a.with_suffix(".json").read_text())
    assert report["key"] == pretrain_key(VLPretrainConfig(**{**TINY_PRE, "cache_dir": "elsewhere"}))
    assert len(report["itm_loss"]) == len(report["mlm_loss"]) == 4 and report["steps"] == 4
    assert report["corpus"]["captions"] == 48 and 0.0 <= report["held_out_itm_acc"] <= 1.0
    assert [e["step"] for e in report["eval"]] == [2, 4]
    assert path_a.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert not path_a.with_suffix(".ckpt").exists()  # the resumable checkpoint is gone once done
    # read back from the float16 file, built as fine-tuning builds it: the report's held-out ITM accuracy
    from fedvl.pretrain.vl import held_out_report

    back = held_out_report(path_a, VLPretrainConfig(**TINY_PRE))
    assert back["pairs"] == 12 and abs(back["itm_acc"] - report["held_out_itm_acc"]) <= 1 / 12 + 1e-9
    assert {k for k in back if k.startswith("itm_acc_")} <= {f"itm_acc_{k}" for k in KINDS} | {"itm_acc_image_swapped"}
    # the MLM head travels too: the image-decided words are read back as pretraining measured them
    e = report["eval"][-1]
    assert abs(back["grounded_all"] - e["grounded_acc"]) <= 1 / 6 + 1e-9
    assert report["held_out_grounded"]["own_image"]["all"] == e["grounded_acc"]
    assert "grounded_other_image_all" in back


def test_a_killed_pretraining_resumes_to_the_same_weights(tmp_path):
    from fedvl.pretrain.vl import pretrain

    whole, _ = _pretrain(tmp_path, "whole")
    cfg = VLPretrainConfig(**{**TINY_PRE, "cache_dir": str(tmp_path / "killed")})

    def kill(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, status=lambda s: None, on_step=kill)
    assert (tmp_path / "killed" / "vl" / f"{pretrain_key(cfg)}.ckpt").is_file()
    said = []
    resumed, meta = pretrain(cfg, status=said.append)
    assert any("resuming pretraining" in s and "step 3/4" in s for s in said)
    a, b = _tensors(whole), _tensors(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(meta["itm_loss"]) == 4


class _Planted:
    """What a hostile checkpoint file could hold: a pickle that runs code when it is loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_that_runs_code_when_unpickled_is_not_run_and_the_pretraining_starts_afresh(tmp_path):
    from fedvl.pretrain.vl import pretrain

    cfg = VLPretrainConfig(**{**TINY_PRE, "cache_dir": str(tmp_path / "c")})
    ckpt = tmp_path / "c" / "vl" / f"{pretrain_key(cfg)}.ckpt"
    ckpt.parent.mkdir(parents=True)
    marker = tmp_path / "ran"
    torch.save({"step": 3, "planted": _Planted(str(marker))}, ckpt)
    said = []
    pretrain(cfg, status=said.append)
    assert not marker.exists()  # loaded with torch's weights-only unpickler: nothing ran
    assert not any("resuming pretraining" in s for s in said)


def test_both_objectives_learn_on_a_small_corpus(tmp_path):
    """200 steps on the tiny model: both losses fall and masked words are read back well above chance
    (the vocabulary has 30,522 entries). Measured: ITM 0.71 -> 0.63, MLM 10.2 -> 9.5, MLM accuracy 0.48."""
    _, meta = _pretrain(tmp_path, "learn", steps=200, corpus_images=60, captions_per_image=4,
                        held_out_images=40, lr=3e-3, eval_every=100, checkpoint_every=1000, max_objects=1)
    itm, mlm = meta["itm_loss"], meta["mlm_loss"]
    assert sum(itm[-40:]) / 40 < sum(itm[:40]) / 40 - 0.03
    assert sum(mlm[-40:]) / 40 < sum(mlm[:40]) / 40 - 0.3
    assert meta["held_out_mlm_acc"] > 0.3


def test_swapped_image_negatives_follow_vilt_and_spare_count_captions():
    """itm_swap: a true non-count caption meets another image and becomes a mismatch; false captions and
    count captions (often true of another image) are left as they are."""
    from types import SimpleNamespace

    from fedvl.pretrain.vl import MATCH, MISMATCH, swap_images

    feats = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 2, 1, 1)  # image i's features are all i
    data = SimpleNamespace(features=feats, image=torch.tensor([0, 1, 2, 3, 4, 0]),
                           kind=["object", "scene", "count", "relation", "object", "count"])
    idx = torch.tensor([0, 1, 2, 3, 4, 5])
    target = torch.tensor([MATCH, MATCH, MATCH, MISMATCH, MATCH, MISMATCH])
    f0 = feats[data.image[idx]].float()
    f, t = swap_images(data, idx, f0, target, 1.0, torch.Generator().manual_seed(0))
    assert t.tolist() == [MISMATCH, MISMATCH, MATCH, MISMATCH, MISMATCH, MISMATCH]
    assert target.tolist() == [MATCH, MATCH, MATCH, MISMATCH, MATCH, MISMATCH]  # the batch is not edited in place
    shown = f[:, 0, 0, 0].long().tolist()
    assert [shown[i] for i in (2, 3, 5)] == [2, 3, 0]  # untouched rows keep their own image
    assert all(shown[i] != int(data.image[i]) for i in (0, 1, 4))  # a swapped caption never meets its own
    f, t = swap_images(data, idx, f0, target, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(f, f0) and torch.equal(t, target)


def test_grounded_masking_chooses_the_image_decided_words():
    from fedvl.models.backbones import load_tokenizer
    from fedvl.pretrain.vl import GROUNDED, _mask_tokens

    tok = load_tokenizer()
    grounded = torch.tensor(tok.convert_tokens_to_ids([w for ws in GROUNDED.values() for w in ws]))
    enc = tok(["there is a small red circle at the top left"] * 64, return_tensors="pt")
    g = torch.Generator().manual_seed(0)
    _, labels = _mask_tokens(enc["input_ids"], enc["attention_mask"], tok, 1e-6, g, grounded_prob=1 - 1e-6,
                             grounded=grounded)
    words = tok.convert_ids_to_tokens(labels[0][labels[0] != -100].tolist())
    assert words == ["small", "red", "circle", "top", "left"] and (labels != -100).sum() == 64 * 5
    _, plain = _mask_tokens(enc["input_ids"], enc["attention_mask"], tok, 0.3, g)
    chosen = set(tok.convert_ids_to_tokens(plain[plain != -100].tolist()))
    assert {"there", "is", "at"} & chosen  # plain masking picks text-decided words as well


def test_grounded_word_accuracy_shows_each_caption_another_image(tmp_path):
    """The "another image" reading feeds every caption an image that is not its own (and the same masked
    word both times); with every image identical the two readings agree exactly."""
    from fedvl.pretrain.vl import Encoded, Pretrainer

    pt = Pretrainer(VLPretrainConfig(**TINY_PRE))
    data = Encoded(make_corpus(12, 2, 64, seed=3, max_objects=2), pt.model, pt.tokenizer, 40, None)
    seen = {}
    encode = pt.model.encode

    def spy(ids, attn, feats):
        seen.setdefault("calls", []).append((ids.clone(), feats.clone()))
        return encode(ids, attn, feats)

    pt.model.encode = spy
    own = pt.grounded_mlm(data)
    (ids_own, f_own), = seen.pop("calls")
    pt.grounded_mlm(data, shuffle_images=True)
    (ids_other, f_other), = seen.pop("calls")
    assert torch.equal(ids_own, ids_other)  # the same masked word
    assert (ids_own == pt.tokenizer.mask_token_id).sum(1).tolist() == [1] * len(ids_own)
    assert all(not torch.equal(a, b) for a, b in zip(f_own, f_other))  # never the caption's own image
    assert set(own) <= {"colour", "shape", "size", "position", "number", "all"} and len(own) >= 3
    data.features[:] = data.features[0]
    assert pt.grounded_mlm(data) == pt.grounded_mlm(data, shuffle_images=True)


def test_new_pretraining_options_are_checked_and_keep_old_keys():
    from fedvl.schema import ConfigError, load_section

    shipped = pretrain_key(VLPretrainConfig())
    assert pretrain_key(VLPretrainConfig(itm_swap=0.0)) == shipped
    assert pretrain_key(VLPretrainConfig(itm_swap=0.5)) != shipped
    assert pretrain_key(VLPretrainConfig(mlm_grounded_prob=None)) != shipped
    for bad, msg in (("itm_swap=1.0", "itm_swap must be in \\[0, 1\\)"),
                     ("mlm_grounded_prob=1.5", "mlm_grounded_prob must be in \\(0, 1\\)")):
        with pytest.raises(ConfigError, match=msg):  # ranges are checked where the settings are loaded
            load_section(VLPretrainConfig, None, [bad])


# ---------------------------------------------------------- the base in a model


def test_base_merges_delta_loads_connector_and_freezes_it(tmp_path):
    path, _ = _pretrain(tmp_path, "base")
    state = read_base(path)[0]
    raw = build_model(ModelConfig(name="tiny", base="raw"), 8, 64, seed=3)
    vl = build_model(ModelConfig(name="tiny", base="vl", base_weights=str(path)), 8, 64, seed=3)
    name = "encoder.layer.1.intermediate.dense"
    want = raw.text.get_submodule(name).weight + state[f"delta.{name}.B"].float() @ state[f"delta.{name}.A"].float()
    assert torch.allclose(vl.text.get_submodule(name).weight, want, atol=1e-6)
    assert not torch.equal(vl.text.get_submodule(name).weight, raw.text.get_submodule(name).weight)
    assert torch.equal(vl.connector.proj.weight, state["connector.proj.weight"].float())
    assert torch.equal(vl.text.embeddings.LayerNorm.weight, state["text.embeddings.LayerNorm.weight"].float())
    # the head and everything pretraining did not touch are as the raw model's (same seed)
    assert torch.equal(vl.head.vqa.query.weight, raw.head.vqa.query.weight)
    frozen = trainable_names(vl, "adapter")
    assert not any(n.startswith("connector.") for n in frozen) and any(n.startswith("head.") for n in frozen)
    assert any(n.startswith("connector.") for n in trainable_names(raw, "adapter"))
    free = build_model(ModelConfig(name="tiny", base="vl", base_weights=str(path), train_connector=True), 8, 64, 3)
    assert any(n.startswith("connector.") for n in trainable_names(free, "adapter"))
    assert any(n.startswith("connector.") for n in trainable_names(vl, "full"))  # full fine-tuning trains all


def test_bad_base_files_say_so(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelUnavailableError, match="cannot be read"):
        build_model(ModelConfig(name="tiny", base="vl", base_weights=str(bad)), 8, 64)
    with pytest.raises(ModelUnavailableError, match="not found"):
        build_model(ModelConfig(name="tiny", base="vl", base_weights=str(tmp_path / "none.safetensors")), 8, 64)
    other, _ = _pretrain(tmp_path, "other", image_size=96)  # 9 visual tokens, not the 4 of 64 px
    with pytest.raises(ModelUnavailableError, match="do not fit this model"):
        build_model(ModelConfig(name="tiny", base="vl", base_weights=str(other)), 8, 64)


def test_base_defaults_and_config_checks(tmp_path):
    from fedvl.models.backbones import base_of
    from fedvl.schema import ConfigError

    assert base_of(ModelConfig()) == "vl" and base_of(ModelConfig(name="tiny")) == "raw"
    assert base_of(ModelConfig(base="raw")) == "raw"
    with pytest.raises(ConfigError, match="needs model.base_weights"):
        load_config(None, ["model.name=tiny", "model.base=vl"])
    with pytest.raises(ConfigError, match="pretrained vision-language checkpoint already"):
        load_config(None, ["model.name=vilt", "model.base=vl"])
    with pytest.raises(ConfigError, match="has no VL base"):
        load_config(None, ["model.name=tiny", "model.base_weights=x.safetensors"])


# ---------------------------------------------------------------- the CLI


def _fedvl(*args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "fedvl", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_cli_pretrains_then_a_run_fine_tunes_on_the_base(tmp_path):
    pre = [f"{k}={v}" for k, v in TINY_PRE.items()] + ["cache_dir=cache"]
    r = _fedvl("pretrain", "vl", *pre, "--quiet", "--out", "base/tiny.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "held-out image-text matching accuracy" in r.stdout
    assert (tmp_path / "base" / "tiny.json").is_file() and (tmp_path / "base" / "tiny.png").is_file()
    r = _fedvl("pretrain", "vl", *pre, "--quiet", cwd=tmp_path)  # the cached result, not a second pretraining
    assert r.returncode == 0 and "already pretrained" in r.stdout, r.stdout + r.stderr
    r = _fedvl("run", "model.name=tiny", "model.base=vl", "model.base_weights=base/tiny.safetensors",
               "data.train_images=8", "data.test_images=4", "data.image_size=64", "algorithm.rounds=1",
               "algorithm.batch_size=8", "run.threads=1", "run.name=vl", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "results" / "vl" / "summary.json").read_text())
    assert summary["params"]["base"] == "vl" and summary["params"]["trained_groups"] == ["adapter", "head"]


def test_cli_corrupt_base_is_one_line_exit_2_and_no_results(tmp_path):
    (tmp_path / "b.safetensors").write_bytes(b"\x00" * 64)
    r = _fedvl("run", "model.name=tiny", "model.base=vl", "model.base_weights=b.safetensors", "run.name=x",
               cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedvl: error:") and "cannot be read" in lines[0], r.stderr
    assert not (tmp_path / "results" / "x").exists()
    r = _fedvl("pretrain", "vl", "steps=0", cwd=tmp_path)
    assert r.returncode == 2 and "steps must be >= 1, got 0" in r.stderr


def test_pretraining_device_is_checked_and_not_part_of_the_key(tmp_path):
    import subprocess
    import sys

    assert pretrain_key(VLPretrainConfig(**TINY_PRE, device="cpu")) == pretrain_key(VLPretrainConfig(**TINY_PRE))
    if torch.cuda.is_available():
        return
    r = subprocess.run([sys.executable, "-m", "fedvl", "pretrain", "vl", "model=tiny", "device=cuda"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "fedvl: error: device=cuda: no CUDA device on this machine (torch " + torch.__version__
        + "); use device=cpu or auto"]
    assert not (tmp_path / "results").exists()


@pytest.mark.cuda
def test_pretraining_on_cuda_matches_the_cpu_and_resumes_there(tmp_path):
    """The same base from a CUDA pretraining as from the CPU one (float rounding apart); its
    checkpoint is device-free (a run killed on the GPU resumes on the CPU)."""
    from fedvl.pretrain.vl import pretrain

    cpu, _ = _pretrain(tmp_path, "cpu")
    cfg = VLPretrainConfig(**{**TINY_PRE, "cache_dir": str(tmp_path / "gpu"), "device": "cuda"})

    def kill(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, status=lambda s: None, on_step=kill)
    cfg.device = "cpu"
    resumed, _ = pretrain(cfg, status=lambda s: None)
    a, b = _tensors(cpu), _tensors(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k].float(), a[k].float(), rtol=2e-2, atol=2e-3)


# ------------------------------------------------------------- the shipped base

SHIPPED_SHA256 = "6acc8d28187f2ef604fada058618830c5192b581bc0f32eb52eeaa0c0865bfcf"


def test_shipped_base_is_the_default_settings_and_reads_the_image():
    """The shipped file is what `fedvl pretrain vl` makes with the default settings (its key), byte for
    byte the one measured in docs/results.md (its hash), and read back as fine-tuning builds the model it
    fills in held-out image-decided words far better with the caption's own image than with another
    (measured on these 150 images: 75.0% against 44.7%; colour 58% against 26%). Its ITM head is at
    chance (48%; docs/results.md says why that is a finding, not a test to pass), so grounding is
    checked where the base has it: masked words only the image decides."""
    from fedvl.io import file_sha256
    from fedvl.models.vlbase import shipped_path
    from fedvl.pretrain.vl import held_out_report

    path = shipped_path("default")
    assert path.name == f"{pretrain_key(VLPretrainConfig())}.safetensors"
    assert file_sha256(path) == SHIPPED_SHA256
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["key"] == pretrain_key(VLPretrainConfig()) and meta["steps"] == 1000
    rep = held_out_report(path, VLPretrainConfig(threads=1), images=150)
    assert rep["pairs"] == 300
    assert rep["grounded_all"] > rep["grounded_other_image_all"] + 0.2
    assert rep["grounded_colour"] > rep["grounded_other_image_colour"] + 0.2
    assert rep["grounded_position"] > rep["grounded_other_image_position"] + 0.2


def test_the_first_base_stays_reproducible():
    """`fedvl pretrain vl count_negatives=uniform mlm_grounded_prob=null steps=1200` names (and makes)
    the first shipped base, whose numbers docs/results.md still quotes."""
    first = VLPretrainConfig(count_negatives="uniform", mlm_grounded_prob=None, steps=1200)
    assert pretrain_key(first) == "vl-e95b7a72e9f8"
