"""Fuzz-style tests with fixed seeds: random malformed configs never end in a traceback
(a ConfigError, i.e. one line and exit 2), random malformed updates never crash the
server round and never change the global model."""

import dataclasses
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from fedvl.algorithms.aggregate import global_norm
from fedvl.algorithms.base import FitResult, ServerRule
from fedvl.cli import main
from fedvl.config import load_config
from fedvl.models.params import get_params
from fedvl.schema import ConfigError, ExperimentConfig
from fedvl.transport.inprocess import build_federation, server_aggregate


def _known_keys() -> list[str]:
    cfg = ExperimentConfig()
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, s.name))]


KEYS = _known_keys()
WEIRD_TEXT = ["", " ", "none", "null", "true", "nan", "-inf", "1e999", "0x10", "1,2,,3", "[1, 2", "{a: 1}", "é∂",
              "\n", "a=b=c", "-1", "0", "3.5", "adapter", "krum", "sign_flip", "photo,mars", "${HOME}", "'", "\x00"]


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(11 if depth < 2 else 8)
    if kind == 0:
        return rng.choice([0, -1, 1, 2, 3, 7, 10**30, -(10**30)])
    if kind == 1:
        return rng.choice([0.0, -0.0, 0.5, 1.5, -2.5, 1e-12, 1e308, float("nan"), float("inf"), -float("inf")])
    if kind == 2:
        return rng.choice(WEIRD_TEXT)
    if kind == 3:
        return rng.choice([True, False])
    if kind == 4:
        return None
    if kind in (5, 6, 7):  # a plausible value of another field
        return rng.choice(["tiny", "lora", "median", "trimmed_mean", "noise", 0.25, 4, "photo"])
    if kind == 8:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS).split(".")[1]: _value(rng, depth + 1) for _ in range(rng.randrange(3))}


def _key(rng: random.Random) -> str:
    k = rng.choice(KEYS)
    r = rng.random()
    if r < 0.15:
        return k.upper()
    if r < 0.25:
        return k + rng.choice(["x", ".sub", "..", "."])
    if r < 0.35:
        return rng.choice(["", ".", "model", "attack", "privacy", "nosuch.key", "a\nb", "run..seed", " run.seed"])
    return k


def _random_overrides(rng: random.Random) -> list[str]:
    out = []
    for _ in range(rng.randrange(1, 5)):
        v = _value(rng)
        text = v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...")
        out.append(f"{_key(rng)}={text.strip()}" if rng.random() > 0.05 else _key(rng))
    return out


def _random_yaml(rng: random.Random) -> str:
    doc: dict = {}
    for _ in range(rng.randrange(1, 6)):
        full = _key(rng)
        section, key = full.split(".", 1) if "." in full else (full, "x")
        target = doc.setdefault(section, {}) if rng.random() > 0.1 else doc
        if isinstance(target, dict):
            target[key] = _value(rng)
    text = yaml.safe_dump(doc, allow_unicode=True)
    r = rng.random()
    if r < 0.1:
        return text[: rng.randrange(len(text) + 1)]  # truncated file
    if r < 0.15:
        return rng.choice(["- a\n- b\n", "just text", "a: [1, 2\n", "!!python/object:os.system {}\n", "\t\x00"])
    return text


def _loads_or_config_error(*args, **kw):
    try:
        return load_config(*args, **kw)
    except ConfigError as e:  # anything else is a bug and fails the test
        assert str(e)
        return None


def test_random_override_configs_never_raise_anything_but_config_error():
    rng = random.Random(6)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        cfg = _loads_or_config_error(None, _random_overrides(rng))
        outcomes["ok" if cfg else "error"] += 1
    assert outcomes["error"] > 300  # the generator mostly produces broken configs ...
    assert outcomes["ok"] > 0  # ... and a few valid ones, which load


def test_random_yaml_files_never_raise_anything_but_config_error(tmp_path):
    rng = random.Random(7)
    p = tmp_path / "c.yaml"
    for i in range(300):
        p.write_text(_random_yaml(rng))
        _loads_or_config_error(p, _random_overrides(rng) if i % 3 == 0 else [])
    p.write_bytes(bytes(range(256)))  # not text at all
    assert _loads_or_config_error(p) is None


def test_random_configs_through_the_cli_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(8)
    for _ in range(150):
        args = _random_overrides(rng)
        code = main(["show-config", *args])
        err = capsys.readouterr().err
        assert code in (0, 2)
        if code == 2:
            lines = err.strip("\n").split("\n")
            assert len(lines) == 1 and lines[0].startswith("fedvl: error:"), err
            assert main(["run", *args]) == 2  # `run` stops at the same line, before any folder exists
            capsys.readouterr()
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_random_bad_configs_in_a_real_subprocess(tmp_path):
    rng = random.Random(9)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    tried = 0
    while tried < 6:
        args = _random_overrides(rng)
        if _loads_or_config_error(None, args) is not None:
            continue
        tried += 1
        r = subprocess.run([sys.executable, "-m", "fedvl", "run", *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert len(r.stderr.strip("\n").split("\n")) == 1, r.stderr


# ------------------------------------------------------------------------- updates


def pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]  # rng.choice would turn mixed objects into an array


def _malformed(rng: np.random.Generator, honest: FitResult, g: dict, n_max: int):
    """One random way to break an update; returns the broken FitResult-or-whatever."""
    params = {k: v.clone() for k, v in honest.params.items()}
    keys = list(params)
    k = keys[rng.integers(len(keys))]
    kind = rng.integers(16)
    n = honest.num_examples
    if kind == 0:
        del params[k]
    elif kind == 1:
        params["intruder." + k] = params[k]
    elif kind == 2:
        params[k] = params[k].reshape(-1)[:-1] if params[k].numel() > 1 else params[k].reshape(1, -1).repeat(2, 1)
    elif kind == 3:
        params[k] = params[k].to(pick(rng, [torch.float64, torch.float16, torch.int32, torch.bool]))
    elif kind == 4:
        params[k].view(-1)[rng.integers(params[k].numel())] = pick(rng, [float("nan"), float("inf"), -float("inf")])
    elif kind == 5:
        # absurd norm: every entry of one tensor at 100x .. 1e30x the whole model's norm
        params[k] = torch.full_like(params[k], float(pick(rng, [1e2, 1e6, 1e30])) * max(global_norm(g), 1.0))
    elif kind == 6:
        params[k] = pick(rng, [None, "tensor", 3.0, [1.0, 2.0], params[k].numpy()])
    elif kind == 7:
        n = int(pick(rng, [0, -1, -1000]))
    elif kind == 8:
        n = pick(rng, [2.5, "12", None, True, float("nan")])
    elif kind == 9:
        n = n_max + int(rng.integers(1, 10**6))
    elif kind == 10:
        params = pick(rng, [None, [], "params", torch.zeros(3)])
    elif kind == 11:
        return pick(rng, [None, {"params": params}, (params, n), "FitResult"])
    elif kind == 12:
        return FitResult(params, n, pick(rng, [None, {"train_loss": "low"}, {1: 2.0}, [1, 2]]))
    elif kind == 13:
        params[k] = params[k].to_sparse()
    elif kind == 14:
        params = {i: v for i, v in enumerate(params.values())}  # right tensors, wrong (non-string) keys
    else:
        params[k] = torch.empty(params[k].shape, dtype=params[k].dtype, device="meta")
    return FitResult(params, n, dict(honest.metrics))


@pytest.mark.parametrize("aggregator", ["mean", "median", "trimmed_mean", "krum"])
def test_random_malformed_updates_never_crash_and_never_change_the_model(tiny_cfg, aggregator):
    fed = build_federation(tiny_cfg(f"algorithm.aggregator={aggregator}", "algorithm.krum_byzantine=0"),
                           status=lambda s: None)
    g = get_params(fed.model, fed.travel)
    g_before = {k: v.clone() for k, v in g.items()}
    rng = np.random.default_rng(10)
    gen = torch.Generator().manual_seed(0)
    honest = {cid: FitResult({k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in g.items()},
                             len(fed.train[cid]), {"train_loss": 1.0, "compute_s": 0.1})
              for cid in fed.train}
    tried = 0
    for trial in range(60):
        ids = list(honest)
        bad = set(rng.choice(ids, size=int(rng.integers(1, len(ids))), replace=False))  # at least one honest left
        results = {cid: _malformed(rng, honest[cid], g, len(fed.train[cid])) if cid in bad else honest[cid]
                   for cid in ids}
        new, rec = server_aggregate(fed, 1, g, results)
        want, _ = server_aggregate(fed, 1, g, {c: honest[c] for c in ids if c not in bad})
        assert set(rec["rejected"]) == bad, (trial, rec["rejected"])
        assert all(torch.equal(new[k], want[k]) for k in g)  # the malformed updates had no effect at all
        assert all(torch.equal(g[k], g_before[k]) for k in g)  # and the input model was never touched
        tried += len(bad)
    assert tried > 100
    # nothing valid at all: a clear error, and still the untouched model
    with pytest.raises(RuntimeError, match="every client update was rejected"):
        server_aggregate(fed, 1, g, {c: _malformed(rng, honest[c], g, 1) for c in honest if c} | {
            c: FitResult(None, 1) for c in list(honest)[:1]})
    assert all(torch.equal(g[k], g_before[k]) for k in g)


def test_strategy_keeps_no_state_and_refuses_foreign_state(tiny_cfg):
    s = ServerRule(tiny_cfg())
    assert s.state_dict() == {}
    s.load_state_dict({})
    with pytest.raises(ValueError):
        s.load_state_dict({"momentum": 1})
