import numpy as np
import pytest
import torch

from fedvl.algorithms.base import FitResult
from fedvl.data.features import image_features
from fedvl.data.world import FUNCTIONS, make_split
from fedvl.engine.loops import batch_order, classification_metrics
from fedvl.report.history import History
from fedvl.transport.inprocess import build_federation, run_round, simulate
from fedvl.rounds.state import ClientStateStore


def test_feature_cache_hit_and_invalidation(tiny_cfg, tmp_path):
    fed = build_federation(tiny_cfg(), status=lambda s: None)
    split = make_split("photo", 4, 1, 64, FUNCTIONS, seed=9)
    first = image_features(fed.model, split.images, str(tmp_path / "c"))
    calls = []
    orig = fed.model.image_features
    fed.model.image_features = lambda x: calls.append(1) or orig(x)
    again = image_features(fed.model, split.images, str(tmp_path / "c"))
    assert calls == [] and torch.equal(first, again)  # computed once, then read from disk
    changed = split.images.copy()
    changed[0, 0, 0, 0] ^= 1
    image_features(fed.model, changed, str(tmp_path / "c"))
    assert calls  # a changed image misses the cache
    # a corrupt cache file is recomputed, not trusted
    for f in (tmp_path / "c" / "features").iterdir():
        f.write_bytes(b"garbage")
    calls.clear()
    assert torch.equal(image_features(fed.model, split.images, str(tmp_path / "c")), first)
    assert calls


def test_encoded_split_batches_point_at_their_images(tiny_cfg):
    fed = build_federation(tiny_cfg(), status=lambda s: None)
    cid = next(iter(fed.train))
    data = fed.train[cid]
    b = data.batch(torch.tensor([0, 3]))
    assert torch.equal(b["features"], data.features[data.image_index[[0, 3]]].float())


def test_batch_order_changes_every_round():
    a = torch.cat(list(batch_order(20, 8, torch.Generator().manual_seed(1))))
    b = torch.cat(list(batch_order(20, 8, torch.Generator().manual_seed(2))))
    assert sorted(a.tolist()) == list(range(20)) and not torch.equal(a, b)


def test_classification_metrics_by_hand():
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 0, 1])
    m = classification_metrics(logits, labels)
    assert m["acc"] == 1.0 and m["bal_acc"] == 1.0
    m = classification_metrics(torch.tensor([[2.0, 0.0]] * 4), labels)  # majority answer only
    assert m["acc"] == 0.75 and m["bal_acc"] == 0.5


def test_bad_update_is_rejected_and_round_continues(tiny_cfg, tmp_path, monkeypatch):
    fed = build_federation(tiny_cfg(), status=lambda s: None)
    real_fit = fed.client.fit

    def fit(ctx):
        res = real_fit(ctx)
        if ctx.client_id == "c1-sketch":
            k = next(iter(res.params))
            res.params[k] = torch.full_like(res.params[k], float("nan"))
        return res

    monkeypatch.setattr(fed.client, "fit", fit)
    g = {n: p.detach().clone() for n, p in fed.model.named_parameters() if n in set(fed.travel)}
    new, rec = run_round(fed, ClientStateStore(tmp_path / "s"), 1, g)
    assert list(rec["rejected"]) == ["c1-sketch"] and "NaN" in rec["rejected"]["c1-sketch"]
    assert all(torch.isfinite(t).all() for t in new.values())
    assert "c1-sketch" not in rec["train"]


def test_all_rejected_stops_with_clear_error(tiny_cfg, tmp_path, monkeypatch):
    fed = build_federation(tiny_cfg(), status=lambda s: None)
    monkeypatch.setattr(fed.client, "fit", lambda ctx: FitResult({}, 1))
    g = {n: p.detach().clone() for n, p in fed.model.named_parameters() if n in set(fed.travel)}
    with pytest.raises(RuntimeError, match="every client update was rejected"):
        run_round(fed, ClientStateStore(tmp_path / "s"), 1, g)


def test_metrics_jsonl_is_written_each_round(tiny_cfg, tmp_path):
    fed = build_federation(tiny_cfg("algorithm.rounds=3", "run.eval_every=2"), status=lambda s: None)
    simulate(fed, tmp_path, History(tmp_path))
    recs = History.read(tmp_path)
    assert [r["round"] for r in recs] == [1, 2, 3]
    assert ["eval" in r for r in recs] == [False, True, True]  # eval every 2 rounds and at the end
    assert all(r["compute_s"] <= r["time_s"] for r in recs)
    assert np.isfinite([r["train_loss"] for r in recs]).all()
