"""Many clients: data made on first use, bounded in memory, identical to eager generation."""

import pytest
import torch

from fedvl.data.benchmarks import benchmark_client_ids, build_benchmark
from fedvl.data.lazy import LazyClientData
from fedvl.report.history import History
from fedvl.schema import ConfigError
from fedvl.transport.inprocess import build_federation, eval_client_ids, simulate


def in_memory(data: LazyClientData) -> list[str]:
    """The clients whose values ``data`` holds, least recently used first."""
    return list(data._cache)


def test_lazy_map_builds_on_first_use_and_evicts_the_least_recent():
    made = []
    m = LazyClientData(["a", "b", "c"], lambda cid: made.append(cid) or cid.upper(), capacity=2)
    assert "c" in m and "z" not in m and made == []  # membership never builds
    assert [m["a"], m["b"], m["a"], m["c"]] == ["A", "B", "A", "C"]
    assert made == ["a", "b", "c"] and in_memory(m) == ["a", "c"]  # b was least recently used
    assert m["b"] == "B" and made[-1] == "b" and m.builds == 4
    assert list(m) == ["a", "b", "c"] and len(m) == 3 and m.get("z") is None
    with pytest.raises(KeyError):
        m["z"]


def test_cycled_clients_each_get_their_own_images(tiny_cfg):
    cfg = tiny_cfg("data.benchmark=function", "data.num_clients=7", "data.cycle_variants=true")
    ids = benchmark_client_ids(cfg.data)
    assert ids[:2] == ["c0-attribute", "c1-object"] and ids[5:] == ["c5-attribute", "c6-object"]
    clients = build_benchmark(cfg.data, 0)
    assert [c.client_id for c in clients] == ids
    # same question function, different images
    assert not (clients[0].train.images == clients[5].train.images).all()


def test_more_clients_than_variants_needs_cycling(tiny_cfg):
    with pytest.raises(ConfigError, match="cycle_variants"):
        tiny_cfg("data.benchmark=function", "data.num_clients=7")
    with pytest.raises(ConfigError, match="needs data.partition=natural"):
        tiny_cfg("data.cycle_variants=true", "data.partition=dirichlet")


def test_lazy_federation_matches_eager_data_and_bounds_memory(tiny_cfg, tmp_path):
    cfg = tiny_cfg("data.num_clients=12", "data.cycle_variants=true", "run.clients_in_memory=3",
                   "algorithm.fraction_fit=0.25", "algorithm.rounds=2", "run.eval_clients=2")
    fed = build_federation(cfg, status=lambda s: None)
    assert fed.train.builds == 0 and len(fed.client_ids) == 12  # nothing generated up front
    eager = {c.client_id: c for c in build_benchmark(cfg.data, cfg.run.seed)}
    cid = fed.client_ids[7]
    assert torch.equal(fed.train[cid].labels, torch.as_tensor(eager[cid].train.labels))
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    final = simulate(fed, run_dir, History(run_dir))
    assert len(in_memory(fed.train)) <= 3 and len(in_memory(fed.test)) <= 3
    assert sorted(final["eval"]) == sorted(eval_client_ids(fed)) and len(final["eval"]) == 2
    assert eval_client_ids(fed) == eval_client_ids(build_federation(cfg, status=lambda s: None))  # same set every time
