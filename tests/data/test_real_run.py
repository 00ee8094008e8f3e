"""Real datasets through build_federation: lazy features, the cache, a 1-round run."""

import numpy as np
import pytest
import torch

from fedvl.cli import main
from fedvl.data.real.encode import lazy_image_features
from fedvl.report.history import History
from fedvl.transport.inprocess import build_federation, simulate

from real_fixtures import write_image  # tests/real_fixtures.py


def real(tiny_cfg, root, *extra):
    return tiny_cfg("data.benchmark=real", f"data.root={root}", "data.image_size=32", "algorithm.rounds=1", *extra)


def test_real_clients_build_and_run_one_round(tiny_cfg, real_root, tmp_path):
    cfg = real(tiny_cfg, real_root, "data.clients=aqua,abstract,vizwiz,cocoqa,gqa", "data.answer_vocab=3")
    fed = build_federation(cfg, status=lambda s: None)
    assert list(fed.train) == ["c0-aqua", "c1-abstract", "c2-vizwiz", "c3-cocoqa", "c4-gqa"]
    assert fed.model.head["vqa"].mlp[-1].out_features == 3
    assert not any(n.startswith("head.") for n in fed.travel)  # per-client vocabularies: heads stay local
    data = fed.test["c2-vizwiz"]
    assert len(data) == 8 and data.features.shape[0] == 8 and data.score_idx is not None
    rec = simulate(fed, tmp_path / "run", History(tmp_path / "run"))
    for cid, m in rec["eval"].items():
        # every fixture question's annotators agree, so the soft score is exact match
        assert m["vqa_score"] == pytest.approx(m["acc"])
        assert np.isfinite(m["loss"]) and m["n"] == 8
    assert "vqa_score" in rec["avg"]


def test_shared_vocab_head_travels_and_feddat_runs(tiny_cfg, real_root, tmp_path):
    cfg = real(tiny_cfg, real_root, "data.clients=clove:attribute,clove:a", "data.vocab_scope=shared",
               "algorithm.name=feddat")
    fed = build_federation(cfg, status=lambda s: None)
    assert all(".adapters.shared." in n for n in fed.travel)  # feddat: only A_S travels
    rec = simulate(fed, tmp_path / "run", History(tmp_path / "run"))
    assert {"vqa_score", "vqa_score_local", "vqa_score_shared"} <= set(rec["avg"])


def test_feature_cache_is_memory_mapped_and_keyed_by_bytes_and_model(tiny_cfg, real_root, tmp_path):
    fed = build_federation(real(tiny_cfg, real_root, "data.clients=gqa"), status=lambda s: None)
    paths = sorted((real_root / "gqa" / "images").iterdir())
    cache = str(tmp_path / "fc")
    calls = []
    orig = fed.model.image_features
    fed.model.image_features = lambda x: calls.append(len(x)) or orig(x)
    first = lazy_image_features(fed.model, paths, 32, cache, chunk=5)
    assert calls == [5, 5, 5, 1]  # decoded and encoded in chunks, never all 16 at once
    again = lazy_image_features(fed.model, paths, 32, cache, chunk=5)
    assert calls == [5, 5, 5, 1] and torch.equal(first, again)  # the second call reads the cache
    (cached,) = (tmp_path / "fc" / "features").iterdir()
    assert cached.suffix == ".npy" and np.array_equal(np.load(cached), first.numpy())
    nocache = lazy_image_features(fed.model, paths, 32, None, chunk=5)
    assert torch.equal(first, nocache)
    write_image(paths[2], "white")  # a changed image misses the cache
    calls.clear()
    changed = lazy_image_features(fed.model, paths, 32, cache, chunk=5)
    assert calls and not torch.equal(changed[2], first[2]) and torch.equal(changed[0], first[0])
    calls.clear()
    fed.model.vision_spec.name += "-other"  # another model misses it too
    lazy_image_features(fed.model, paths, 32, cache, chunk=5)
    assert calls
    first = first.clone()  # `first` maps its cache file, which is about to be overwritten in place
    for f in (tmp_path / "fc" / "features").iterdir():  # a corrupt cache file is recomputed
        f.write_bytes(b"garbage")
    calls.clear()
    assert torch.equal(lazy_image_features(fed.model, paths, 32, cache, chunk=5)[0], first[0]) and calls


def test_cli_missing_dataset_is_one_line_exit_2(tmp_path, capsys):
    code = main(["run", "model.name=tiny", "data.benchmark=real", f"data.root={tmp_path / 'none'}",
                 f"run.output_dir={tmp_path / 'r'}", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "data.root" in err and "docs/datasets.md" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra, msg", [
    (["data.root="], "needs data.root"),
    (["algorithm.name=centralized"], "data.vocab_scope=shared"),
    (["data.partition=dirichlet"], "data.partition=natural"),
])
def test_config_checks(tiny_cfg, real_root, extra, msg):
    from fedvl.schema import ConfigError

    with pytest.raises(ConfigError, match=msg):
        real(tiny_cfg, real_root, *extra)


@pytest.mark.slow
def test_real_data_benchmark_smoke(tmp_path):
    """benchmarks/real_data.py at small scale: three fresh processes, the warm cache decodes no image."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "real_data.py"
    env = dict(os.environ, FEDVL_BENCH_OUT=str(tmp_path / "bench.json"))
    r = subprocess.run([sys.executable, str(script), "--questions", "64", "--source-px", "64", "model.name=tiny",
                        "data.image_size=32", "run.threads=1"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "bench.json").read_text())
    assert [run["mode"] for run in out["runs"]] == ["no_cache", "cache_cold", "cache_warm"]
    assert out["questions"]["train"] == {"questions": 64, "images": 32}
    for run in out["runs"]:
        assert run["train_images"] == 32 and run["steps"] == 2  # 64 questions, batch 32: one epoch
        assert run["peak_rss_mb"] > 0 and run["epoch_s"] > 0
