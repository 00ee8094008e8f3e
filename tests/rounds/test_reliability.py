"""Robust aggregation, attacks, norm/sample-count rejection and DP through the real round
(client_fit / server_aggregate), on the tiny model."""

import pytest
import torch

from fedvl.algorithms.aggregate import coordinate_median, dp_mean
from fedvl.algorithms.attacks import attack_update
from fedvl.algorithms.privacy import epsilon_spent
from fedvl.models.params import get_params
from fedvl.report.history import History
from fedvl.schema import ConfigError
from fedvl.transport.inprocess import build_federation, client_fit, derived_seed, run_round, server_aggregate, simulate
from fedvl.rounds.state import ClientStateStore


def _fed(tiny_cfg, *extra):
    return build_federation(tiny_cfg(*extra), status=lambda s: None)


def test_attacker_sends_the_poisoned_version_of_its_honest_update(tiny_cfg, tmp_path):
    honest = _fed(tiny_cfg)
    bad = _fed(tiny_cfg, "attack.kind=sign_flip", "attack.fraction=0.25", "attack.scale=3")
    assert len(bad.attackers) == 1 and honest.attackers == []
    cid = bad.attackers[0]
    g = get_params(honest.model, honest.travel)
    h = client_fit(honest, ClientStateStore(tmp_path / "h"), cid, 1, g)
    a = client_fit(bad, ClientStateStore(tmp_path / "a"), cid, 1, g)
    want = attack_update(g, h.params, "sign_flip", 3.0, torch.Generator())
    assert all(torch.equal(a.params[k], want[k]) for k in g)
    assert a.metrics["attacker"] == 1.0
    other = next(c for c in bad.train if c != cid)  # everybody else stays honest
    h2 = client_fit(honest, ClientStateStore(tmp_path / "h"), other, 1, g)
    a2 = client_fit(bad, ClientStateStore(tmp_path / "a"), other, 1, g)
    assert all(torch.equal(a2.params[k], h2.params[k]) for k in g) and "attacker" not in a2.metrics


@pytest.mark.parametrize("name", ["fedavg", "feddat"])
def test_configured_aggregator_is_used_by_every_algorithm(name, tiny_cfg, tmp_path):
    fed = _fed(tiny_cfg, f"algorithm.name={name}", "algorithm.aggregator=median")
    g = get_params(fed.model, fed.travel)
    store = ClientStateStore(tmp_path / "s")
    results = {cid: client_fit(fed, store, cid, 1, g) for cid in fed.train}
    new, rec = server_aggregate(fed, 1, g, results)
    want = coordinate_median([r.params for r in results.values()])
    assert all(torch.equal(new[k], want[k]) for k in g)
    assert "rejected" not in rec


def test_absurd_norm_and_sample_count_are_rejected_and_the_round_goes_on(tiny_cfg, tmp_path):
    fed = _fed(tiny_cfg, "algorithm.max_update_norm=10")
    g = get_params(fed.model, fed.travel)
    store = ClientStateStore(tmp_path / "s")
    results = {cid: client_fit(fed, store, cid, 1, g) for cid in fed.train}
    ids = list(results)
    k = next(iter(g))
    results[ids[0]].params[k] = results[ids[0]].params[k] * 1e6
    results[ids[1]].num_examples = len(fed.train[ids[1]]) + 1
    clean = {c: results[c] for c in ids[2:]}
    new, rec = server_aggregate(fed, 1, g, results)
    assert set(rec["rejected"]) == {ids[0], ids[1]}
    assert "update norm" in rec["rejected"][ids[0]] and "more than the client holds" in rec["rejected"][ids[1]]
    want, _ = server_aggregate(fed, 1, g, clean)
    assert all(torch.equal(new[k], want[k]) for k in g)


def test_scaled_attack_rejected_by_norm_check_shows_in_metrics_and_summary(tiny_cfg, tmp_path):
    from fedvl.experiment import run_experiment

    cfg = tiny_cfg("attack.kind=scaled", "attack.scale=1e7", "run.name=atk")
    summary = run_experiment(cfg, tmp_path / "atk", progress_enabled=False)
    recs = History.read(tmp_path / "atk")
    assert all(len(r["rejected"]) == 1 and "update norm" in next(iter(r["rejected"].values())) for r in recs)
    assert summary["rejected_updates"] == 2 and summary["attackers"] == list(recs[0]["rejected"])
    assert "rejected updates: 2 over 2 rounds" in (tmp_path / "atk" / "summary.md").read_text()


def test_dp_round_is_dp_mean_with_seeded_noise_and_reports_epsilon(tiny_cfg, tmp_path):
    fed = _fed(tiny_cfg, "privacy.enabled=true", "privacy.clip_norm=0.5", "privacy.noise_multiplier=0.8",
               "algorithm.aggregation=uniform", "algorithm.fraction_fit=0.5", "algorithm.rounds=3")
    g = get_params(fed.model, fed.travel)
    store = ClientStateStore(tmp_path / "s")
    new, rec = run_round(fed, store, 2, g)
    # recompute from the same (seed, round) noise: the server step is exactly DP-FedAvg's
    results = {cid: client_fit(fed, ClientStateStore(tmp_path / "t"), cid, 2, g) for cid in rec["sampled"]}
    gen = torch.Generator().manual_seed(derived_seed(0, "dp-noise", 2))
    want = dp_mean(g, [r.params for r in results.values()], 0.5, 0.8, gen)
    assert all(torch.equal(new[k], want[k]) for k in g)
    assert rec["privacy"] == {"epsilon": epsilon_spent(0.8, 0.5, 2, 1e-5), "delta": 1e-5, "sample_rate": 0.5}
    (tmp_path / "run").mkdir()
    simulate(fed, tmp_path / "run", History(tmp_path / "run"))
    eps = [r["privacy"]["epsilon"] for r in History.read(tmp_path / "run")]
    assert eps == [epsilon_spent(0.8, 0.5, r, 1e-5) for r in (1, 2, 3)] and eps[0] < eps[1] < eps[2]


def test_dp_sample_rate_is_the_share_of_clients_actually_sampled(tiny_cfg):
    # 0.4 x 4 clients rounds to 2 sampled: the accountant must use 0.5, not 0.4 (which would understate epsilon)
    fed = _fed(tiny_cfg, "algorithm.fraction_fit=0.4")
    assert fed.server.sample_rate(4) == 0.5 and fed.server.clients_per_round(4) == 2


def test_default_options_leave_fedavg_unchanged(tiny_cfg, tmp_path):
    """aggregator=mean without clipping is exactly the FedAvg the runtime always did."""
    from fedvl.algorithms.aggregate import fedavg

    fed = _fed(tiny_cfg)
    g = get_params(fed.model, fed.travel)
    results = {cid: client_fit(fed, ClientStateStore(tmp_path / "s"), cid, 1, g) for cid in fed.train}
    new, _ = server_aggregate(fed, 1, g, results)
    want = fedavg([r.params for r in results.values()], [r.num_examples for r in results.values()])
    assert all(torch.equal(new[k], want[k]) for k in g)


@pytest.mark.parametrize("override,message", [
    (["algorithm.trim_ratio=0.5"], "trim_ratio must be in [0, 0.5)"),
    (["algorithm.aggregator=krum", "algorithm.krum_byzantine=2"], "needs at least 5 clients per round, got 4"),
    (["algorithm.aggregator=krum", "algorithm.krum_select=4"], "krum_select must be <= "),
    (["algorithm.clip_update_norm=1", "algorithm.clip_to_median=true"], "not both"),
    (["algorithm.max_update_norm=-1"], "max_update_norm must be >= 0"),
    (["attack.kind=noise", "attack.fraction=0.1"], "selects no attacker"),
    (["attack.scale=0"], "attack.scale must be > 0"),
    (["privacy.enabled=true"], "privacy.enabled needs algorithm.aggregator=mean and algorithm.aggregation=uniform"),
    (["privacy.enabled=true", "algorithm.aggregation=uniform", "privacy.delta=1"], "privacy.delta must be in"),
    (["privacy.enabled=true", "algorithm.aggregation=uniform", "algorithm.clip_to_median=true"], "unset algorithm"),
    (["algorithm.lr=nan"], "algorithm.lr is not a number"),  # not "must be > 0": NaN fails every comparison
    (["attack.scale=inf"], "attack.scale must be a finite number"),
    (["run.keep_checkpoints=0"], "run.keep_checkpoints must be >= 1"),
])
def test_reliability_config_errors(override, message, tiny_cfg):
    with pytest.raises(ConfigError) as e:
        tiny_cfg(*override)
    assert message in str(e.value) and "\n" not in str(e.value)
