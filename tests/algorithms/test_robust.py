"""Robust aggregation, update validation, attacks and DP-FedAvg: hand-computed tensors."""

import math

import numpy as np
import pytest
import torch

from fedvl.algorithms.aggregate import (
    UpdateRejected,
    aggregate_updates,
    clip_update,
    coordinate_median,
    dp_mean,
    global_norm,
    krum,
    krum_scores,
    median_norm,
    trimmed_mean,
    validate_update,
)
from fedvl.algorithms.attacks import attack_update, choose_attackers
from fedvl.algorithms.privacy import epsilon_spent


def vec(*xs, dtype=torch.float32):
    return {"w": torch.tensor(xs, dtype=dtype)}


def test_coordinate_median_odd_and_even():
    ups = [vec(1.0, -2.0), vec(5.0, 0.0), vec(3.0, 100.0)]
    assert torch.equal(coordinate_median(ups)["w"], torch.tensor([3.0, 0.0]))
    ups.append(vec(10.0, 1.0))  # even: mean of the two middle values, (3+5)/2 and (0+1)/2
    assert torch.equal(coordinate_median(ups)["w"], torch.tensor([4.0, 0.5]))


def test_trimmed_mean_drops_both_ends_per_coordinate():
    ups = [vec(1.0, 7.0), vec(100.0, 8.0), vec(3.0, -50.0), vec(5.0, 9.0)]
    # beta 0.25 of 4 -> drop 1 each end: [3, 5] -> 4 and [7, 8] -> 7.5
    assert torch.equal(trimmed_mean(ups, 0.25)["w"], torch.tensor([4.0, 7.5]))
    # beta 0.2 of 4 -> floor(0.8) = 0 dropped: the plain mean
    assert torch.allclose(trimmed_mean(ups, 0.2)["w"], torch.tensor([27.25, -6.5]))
    # float rounding: 0.3 * 10 is 3.0000000000000004, still 3 cut per end
    ten = [vec(float(i)) for i in range(10)]
    assert trimmed_mean(ten, 0.3)["w"].item() == pytest.approx(4.5)
    with pytest.raises(ValueError):
        trimmed_mean(ups, 0.5)


def test_clip_update_by_hand():
    g = vec(1.0, 1.0)
    u = vec(4.0, 5.0)  # delta (3, 4), norm 5
    assert torch.allclose(clip_update(g, u, 1.0)["w"], torch.tensor([1.6, 1.8]))
    assert torch.equal(clip_update(g, u, 10.0)["w"], u["w"])  # already inside the ball
    assert global_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}) == 5.0  # one vector over all tensors
    assert median_norm(g, [vec(2.0, 1.0), vec(4.0, 5.0), vec(1.0, 1.0)]) == 1.0  # norms 1, 5, 0


def test_krum_and_multi_krum_by_hand():
    ups = [vec(0.0), vec(1.0), vec(3.0), vec(10.0)]
    # f=0 -> n-f-2 = 2 nearest: 0: 1+9=10, 1: 1+4=5, 3: 4+9=13, 10: 49+81=130
    assert krum_scores(ups, 0) == pytest.approx([10.0, 5.0, 13.0, 130.0])
    assert krum(ups, 0)["w"].item() == 1.0
    assert krum(ups, 0, select=2)["w"].item() == 0.5  # mean of the two best: 1 and 0
    # f=1 -> 1 nearest: 0:1, 1:1, 3:4, 10:49; ties go to the lower index
    assert krum_scores(ups, 1) == pytest.approx([1.0, 1.0, 4.0, 49.0])
    assert krum(ups, 1)["w"].item() == 0.0
    # too few updates for n > f + 2 (after rejections): neighbours clamped to >= 1
    assert krum([vec(0.0), vec(5.0)], 3)["w"].item() == 0.0
    assert krum([vec(7.0)], 1)["w"].item() == 7.0


def test_aggregate_updates_dispatch_and_default_is_fedavg():
    g = vec(0.0, 0.0)
    ups = [vec(1.0, 0.0), vec(3.0, 0.0), vec(30.0, 40.0)]
    n = [1, 1, 2]
    assert torch.allclose(aggregate_updates(g, ups, n)["w"], torch.tensor([16.0, 20.0]))  # weighted mean
    assert torch.allclose(aggregate_updates(g, ups, n, weighting="uniform")["w"], torch.tensor([34 / 3, 40 / 3]))
    assert torch.equal(aggregate_updates(g, ups, n, aggregator="median")["w"], torch.tensor([3.0, 0.0]))
    # clip every delta to norm 5 first: (1,0), (3,0), (3,4) -> weighted mean (1+3+6)/4, 8/4
    assert torch.allclose(aggregate_updates(g, ups, n, clip_norm=5.0)["w"], torch.tensor([2.5, 2.0]))
    # median-norm clipping: norms 1, 3, 50 -> clip to 3: (1,0), (3,0), (1.8, 2.4)
    got = aggregate_updates(g, ups, n, clip_to_median=True, weighting="uniform")["w"]
    assert torch.allclose(got, torch.tensor([5.8 / 3, 0.8]))
    assert aggregate_updates(g, ups, n, aggregator="krum", krum_byzantine=0)["w"].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="unknown aggregator"):
        aggregate_updates(g, ups, n, aggregator="mode")


def test_robust_rules_keep_dtype_and_do_not_touch_inputs():
    g = vec(0.5, 0.5)
    ups = [vec(1.0, 2.0), vec(3.0, 4.0), vec(5.0, 6.0)]
    before = [u["w"].clone() for u in ups]
    for rule in ("mean", "median", "trimmed_mean", "krum"):
        out = aggregate_updates(g, ups, [1, 1, 1], aggregator=rule, clip_norm=1.0, krum_byzantine=0)
        assert out["w"].dtype == torch.float32
    assert all(torch.equal(u["w"], b) for u, b in zip(ups, before)) and torch.equal(g["w"], torch.tensor([0.5, 0.5]))


def test_dp_mean_clips_then_adds_noise_of_std_z_s_over_m():
    g = vec(0.0, 0.0, 0.0)
    ups = [vec(3.0, 4.0, 0.0), vec(0.3, 0.4, 0.0)]  # norms 5 and 0.5; clip 1 -> (0.6, 0.8, 0), unchanged
    out = dp_mean(g, ups, clip_norm=1.0, noise_multiplier=2.0, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(3, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * (2.0 * 1.0 / 2)
    want = torch.tensor([0.45, 0.6, 0.0], dtype=torch.float64) + noise
    assert torch.allclose(out["w"].double(), want, atol=1e-6)
    # the empirical std over many coordinates is z*S/m
    big = {"w": torch.zeros(200_000)}
    out = dp_mean(big, [big, big, big, big], 0.5, 1.2, torch.Generator().manual_seed(0))
    assert out["w"].double().std().item() == pytest.approx(1.2 * 0.5 / 4, rel=0.01)


def test_epsilon_grows_with_rounds_and_matches_opacus():
    from opacus.accountants import RDPAccountant

    eps = [epsilon_spent(1.1, 0.5, r, 1e-5) for r in (1, 2, 5, 20)]
    assert eps == sorted(set(eps))  # strictly increasing
    acc = RDPAccountant()
    for _ in range(5):
        acc.step(noise_multiplier=1.1, sample_rate=0.5)
    assert eps[2] == acc.get_epsilon(1e-5)
    assert epsilon_spent(1.1, 0.5, 0, 1e-5) == 0.0
    assert epsilon_spent(3.0, 0.5, 5, 1e-5) < eps[2]  # more noise, less privacy spent


def test_attacks_by_hand():
    g, u = vec(1.0, 1.0), vec(2.0, 3.0)  # honest delta (1, 2)
    gen = torch.Generator().manual_seed(3)
    assert attack_update(g, u, "sign_flip", 2.0, gen)["w"].tolist() == [-1.0, -3.0]
    assert attack_update(g, u, "scaled", 3.0, gen)["w"].tolist() == [4.0, 7.0]
    noisy = attack_update(g, u, "noise", 2.0, torch.Generator().manual_seed(5))["w"].double()
    z = torch.randn(2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(noisy, 1.0 + 2.0 * math.sqrt(2.5) * z)  # rms of (1, 2) is sqrt(2.5)
    with pytest.raises(ValueError):
        attack_update(g, u, "backdoor", 1.0, gen)


def test_attackers_are_chosen_from_the_seed():
    ids = [f"c{i}" for i in range(8)]
    a = choose_attackers(ids, 0.25, seed=0)
    assert len(a) == 2 and a == choose_attackers(ids, 0.25, seed=0) and set(a) <= set(ids)
    assert len({tuple(choose_attackers(ids, 0.25, seed=s)) for s in range(6)}) > 1
    assert choose_attackers(ids, 0.0, seed=0) == []


REF = {"w": torch.tensor([3.0, 4.0])}  # norm 5


@pytest.mark.parametrize("update,n,kw,reason", [
    ({"w": torch.tensor([6.0, 8.0])}, 5, {"max_update_norm": 1.0}, None),  # delta norm 5 = 1 x 5: allowed
    ({"w": torch.tensor([6.0, 8.5])}, 5, {"max_update_norm": 1.0}, "update norm"),
    ({"w": torch.tensor([3.0, 4.0]) * 1e6}, 5, {"max_update_norm": 10.0}, "update norm"),
    ({"w": torch.tensor([3.0, 4.0]) * 1e6}, 5, {"max_update_norm": 0.0}, None),  # 0 = no norm check
    ({"w": torch.zeros(2)}, 11, {"max_examples": 10}, "more than the client holds"),
    ({"w": torch.zeros(2)}, 10, {"max_examples": 10}, None),
    ({"w": torch.zeros(2)}, np.int64(4), {}, None),
    ({"w": torch.zeros(2)}, True, {}, "positive integer"),
    ({"w": torch.zeros(2)}, 2.0, {}, "positive integer"),
    ({"w": torch.zeros(2)}, -3, {}, "positive integer"),
    ([torch.zeros(2)], 5, {}, "mapping"),
    ({"w": torch.zeros(2), 1: torch.zeros(1)}, 5, {}, "keys differ"),  # mixed key types do not crash
    ({"w": [0.0, 0.0]}, 5, {}, "not a tensor"),
    ({"w": torch.zeros(2).to_sparse()}, 5, {}, "layout"),
    ({"w": torch.zeros(2, device="meta")}, 5, {}, "device"),
])
def test_validate_update_norms_counts_and_types(update, n, kw, reason):
    if reason is None:
        validate_update(REF, update, n, **kw)
    else:
        with pytest.raises(UpdateRejected, match=reason):
            validate_update(REF, update, n, **kw)


def test_norm_check_floors_the_global_norm_at_one():
    zero = {"w": torch.zeros(2)}  # e.g. a zero-initialised adapter up-projection
    validate_update(zero, {"w": torch.tensor([0.0, 1.0])}, 1, max_update_norm=1.0)
    with pytest.raises(UpdateRejected):
        validate_update(zero, {"w": torch.tensor([0.0, 1.5])}, 1, max_update_norm=1.0)
