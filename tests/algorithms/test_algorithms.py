"""Behaviour specific to single algorithms."""

import pytest
import torch

from fedvl.algorithms import registry
from fedvl.algorithms.base import ServerRule
from fedvl.report.history import History
from fedvl.transport.inprocess import build_federation, simulate


def _final(cfg, run_dir):
    fed = build_federation(cfg, status=lambda s: None)
    run_dir.mkdir(parents=True)
    return fed, simulate(fed, run_dir, History(run_dir))


def test_the_rules_that_aggregate_their_own_way_say_so():
    """``custom_aggregate`` is what run.secagg's check reads: the flag is set exactly where a
    server rule overrides ``aggregate``, and only local-only training does."""
    rules = {name: algo.server for name, algo in registry().items() if algo.family == "parameters"}
    assert {name for name, rule in rules.items() if rule.custom_aggregate} == {"local"}
    assert {name for name, rule in rules.items() if rule.aggregate is not ServerRule.aggregate} == {"local"}


def test_fedprox_with_mu_zero_is_fedavg(tiny_cfg, tmp_path):
    _, avg = _final(tiny_cfg("algorithm.name=fedavg"), tmp_path / "a")
    _, prox = _final(tiny_cfg("algorithm.name=fedprox", "algorithm.prox_mu=0"), tmp_path / "b")
    assert avg["eval"] == prox["eval"]


def test_fedprox_keeps_clients_near_the_global_model(tiny_cfg, tmp_path):
    """With a huge mu a client's update barely moves away from the global parameters."""
    from fedvl.transport.inprocess import load_client
    from fedvl.rounds.state import ClientStateStore
    from fedvl.algorithms.base import ClientContext

    drift = {}
    for mu in (0.0, 100.0):
        fed = build_federation(tiny_cfg("algorithm.name=fedprox", f"algorithm.prox_mu={mu}",
                                        "algorithm.local_steps=8"), status=lambda s: None)
        g = {n: p.detach().clone() for n, p in fed.model.named_parameters() if n in set(fed.travel)}
        store = ClientStateStore(tmp_path / f"s{mu}")
        cid = next(iter(fed.train))
        load_client(fed, store, cid, g)
        ctx = ClientContext(cid, fed.model, fed.train[cid], fed.cfg, 1, g, fed.travel, fed.trainable,
                            torch.Generator().manual_seed(0))
        res = fed.client.fit(ctx)
        drift[mu] = sum(((res.params[n] - g[n]) ** 2).sum().item() for n in g)
    assert drift[100.0] < 0.5 * drift[0.0]


def test_local_only_state_lives_on_disk_per_client(tiny_cfg, tmp_path):
    fed, _ = _final(tiny_cfg("algorithm.name=local"), tmp_path / "r")
    files = sorted(p.name for p in (tmp_path / "r" / "client_states").iterdir())
    assert files == [f"{cid}.safetensors" for cid in sorted(fed.test)]
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / "r" / "client_states" / f) for f in files[:2])
    assert set(a) == set(fed.local)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # each client has its own model


def test_centralized_trains_one_model_on_pooled_data(tiny_cfg, tmp_path):
    fed, final = _final(tiny_cfg("algorithm.name=centralized"), tmp_path / "r")
    assert list(fed.train) == ["pooled"]
    assert len(fed.train["pooled"]) == 4 * 12 * fed.cfg.data.questions_per_image  # 4 clients x 12 images
    assert set(final["eval"]) == set(fed.test)


def test_fraction_fit_samples_a_subset_deterministically(tiny_cfg, tmp_path):
    cfg = tiny_cfg("algorithm.fraction_fit=0.5", "algorithm.rounds=3")
    _final(cfg, tmp_path / "a")
    _final(cfg, tmp_path / "b")
    ha, hb = History.read(tmp_path / "a"), History.read(tmp_path / "b")
    assert [r["sampled"] for r in ha] == [r["sampled"] for r in hb]
    assert all(len(r["sampled"]) == 2 for r in ha)
    assert len({tuple(r["sampled"]) for r in ha}) > 1  # different clients in different rounds


def test_full_fine_tuning_gives_the_backbone_its_own_learning_rate_on_the_same_schedule(tiny_cfg):
    """peft=full: pretrained weights train at algorithm.full_lr, new modules at algorithm.lr, and a
    cosine schedule scales both alike (no group silently keeps the other's rate)."""
    from fedvl.algorithms.base import ClientContext
    from fedvl.engine.loops import set_lr
    from fedvl.models.params import param_group

    fed = build_federation(tiny_cfg("model.peft=full", "algorithm.lr=1e-3", "algorithm.full_lr=1e-5"),
                           status=lambda s: None)
    cid = next(iter(fed.train))
    ctx = ClientContext(cid, fed.model, fed.train[cid], fed.cfg, 1, {}, fed.travel, fed.trainable,
                        torch.Generator().manual_seed(0))
    opt = fed.client.optimizer(ctx)
    names = {id(p): n for n, p in fed.model.named_parameters()}
    set_lr(opt, 5e-4)  # e.g. halfway down a cosine
    by_group = {}
    for g in opt.param_groups:
        for p in g["params"]:
            by_group.setdefault(param_group(names[id(p)]), set()).add(round(g["lr"], 12))
    assert by_group["backbone"] == {5e-6}
    assert by_group["head"] == by_group["connector"] == {5e-4}
    # full_lr=0 means one rate for everything
    fed0 = build_federation(tiny_cfg("model.peft=full", "algorithm.full_lr=0"), status=lambda s: None)
    opt0 = fed0.client.optimizer(ClientContext(cid, fed0.model, fed0.train[cid], fed0.cfg, 1, {}, fed0.travel,
                                               fed0.trainable, torch.Generator().manual_seed(0)))
    assert len(opt0.param_groups) == 1 and opt0.param_groups[0]["lr"] == fed0.cfg.algorithm.lr


def test_keep_local_makes_fedavg_send_only_its_adapters(tiny_cfg, tmp_path):
    """The paper's protocol: a FedAvg-PEFT baseline keeps head and connector on each client,
    so it uploads exactly what FedDAT uploads (its one adapter = FedDAT's A_S), and each
    client's head is its own after a round."""
    from safetensors.torch import load_file

    from fedvl.config import load_config
    from fedvl.models.params import get_params, param_group
    from fedvl.schema import ConfigError
    from fedvl.transport.inprocess import run_round
    from fedvl.rounds.state import ClientStateStore

    fed = build_federation(tiny_cfg("algorithm.name=fedavg", "algorithm.keep_local=connector,head"),
                           status=lambda s: None)
    assert {param_group(n) for n in fed.travel} == {"adapter.shared"}
    assert {param_group(n) for n in fed.local} == {"head", "connector"}
    dat = build_federation(tiny_cfg("algorithm.name=feddat"), status=lambda s: None)
    assert fed.param_report()["travel_params"] == dat.param_report()["travel_params"]
    g = get_params(fed.model, fed.travel)
    new, _ = run_round(fed, ClientStateStore(tmp_path / "s"), 1, g)
    assert set(new) == set(fed.travel)  # the server never holds a head
    states = sorted((tmp_path / "s").iterdir())
    a, b = load_file(states[0]), load_file(states[1])
    heads = [k for k in a if param_group(k) == "head"]
    assert heads and any(not torch.equal(a[k], b[k]) for k in heads)
    with pytest.raises(ConfigError, match="keep_local may list"):
        tiny_cfg("algorithm.keep_local=adapter")
    with pytest.raises(ConfigError, match="nothing travels"):  # FedAvg that would send nothing
        build_federation(tiny_cfg("model.peft=head", "algorithm.keep_local=connector,head"), status=lambda s: None)
    with pytest.raises(ConfigError, match="same group"):
        load_config(None, ["algorithm.name=feddat", "algorithm.also_travel=head", "algorithm.keep_local=head"])
