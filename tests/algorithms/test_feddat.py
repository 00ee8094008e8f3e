"""FedDAT: MKD losses by hand, what travels, what never gets gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from fedvl.algorithms.base import ClientContext
from fedvl.algorithms.feddat import copy_shared_to_teacher
from fedvl.algorithms.losses import kd_loss, task_kd_parts
from fedvl.config import load_config
from fedvl.models.params import get_params, param_group
from fedvl.report.history import History
from fedvl.schema import ConfigError
from fedvl.transport.inprocess import build_federation, load_client, run_round, simulate
from fedvl.rounds.state import ClientStateStore


def test_kd_loss_by_hand():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 3.0]])
    T = 3.0
    ps = [math.exp(1 / 3) / (math.exp(1 / 3) + 1), 1 / (math.exp(1 / 3) + 1)]
    pt = [1 / (1 + math.e), math.e / (1 + math.e)]
    kl = sum(pt[i] * math.log(pt[i] / ps[i]) for i in range(2))
    assert kd_loss(s, t, T).item() == pytest.approx(T * T * kl, rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_is_batch_mean():
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 3.0], [0.0, 0.0]])
    assert kd_loss(s, t, 3.0).item() == pytest.approx(kd_loss(s[:1], t[:1], 3.0).item() / 2, rel=1e-6)


def test_task_kd_mix_weights():
    z = torch.tensor([[2.0, -1.0, 0.5]])
    y = torch.tensor([2])
    t = torch.tensor([[0.0, 1.0, 0.0]])
    ce = F.cross_entropy(z, y).item()
    kd = kd_loss(z, t, 3.0).item()
    loss, ce_part, kd_part = task_kd_parts(z, y, t, 0.5, 3.0)
    assert loss.item() == pytest.approx(0.5 * ce + 0.5 * kd, rel=1e-6)
    assert ce_part.item() == pytest.approx(ce, rel=1e-6) and kd_part.item() == pytest.approx(kd, rel=1e-6)
    assert task_kd_parts(z, y, t, 0.2, 3.0)[0].item() == pytest.approx(0.8 * ce + 0.2 * kd, rel=1e-6)
    loss, ce_part, kd_part = task_kd_parts(z, y, None, 0.5, 3.0)
    assert loss.item() == pytest.approx(ce, rel=1e-6) and ce_part.item() == pytest.approx(ce, rel=1e-6)
    assert kd_part is None


def test_feddat_needs_adapters():
    with pytest.raises(ConfigError, match="feddat needs model.peft=adapter"):
        load_config(None, ["algorithm.name=feddat", "model.peft=lora"])


def _fed(tiny_cfg, *extra):
    return build_federation(tiny_cfg("algorithm.name=feddat", *extra), status=lambda s: None)


def test_only_shared_adapter_travels_and_local_state_stays_on_disk(tiny_cfg, tmp_path):
    fed = _fed(tiny_cfg)
    groups = {param_group(n) for n in fed.travel}
    assert groups == {"adapter.shared"}
    assert {param_group(n) for n in fed.local} == {"adapter.local", "head", "connector"}
    assert not any(param_group(n) == "adapter.teacher" for n in fed.trainable)
    g = get_params(fed.model, fed.travel)
    store = ClientStateStore(tmp_path / "s")
    new, rec = run_round(fed, store, 1, g)
    assert set(new) == set(fed.travel)  # the server only ever holds A_S
    assert any(not torch.equal(new[k], g[k]) for k in g)
    states = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert len(states) == len(fed.test)
    # the local adapter each client keeps differs between clients and from its initial value
    from safetensors.torch import load_file

    a = load_file(tmp_path / "s" / states[0])
    b = load_file(tmp_path / "s" / states[1])
    local_keys = [k for k in a if param_group(k) == "adapter.local"]
    assert local_keys and any(not torch.equal(a[k], b[k]) for k in local_keys)
    assert any(not torch.equal(a[k], fed.init_local[k]) for k in local_keys)
    # three scores per client, DAT the headline
    m = rec["eval"]["c0-photo"]
    assert {"acc", "acc_local", "acc_shared"} <= set(m)


def test_teacher_gets_no_gradient_and_backbone_untouched(tiny_cfg, tmp_path):
    fed = _fed(tiny_cfg)
    named = dict(fed.model.named_parameters())
    frozen_before = {n: p.detach().clone() for n, p in named.items()
                     if param_group(n) in ("backbone", "vision")}
    g = get_params(fed.model, fed.travel)
    store = ClientStateStore(tmp_path / "s")
    cid = "c0-photo"
    load_client(fed, store, cid, g)
    ctx = ClientContext(cid, fed.model, fed.train[cid], fed.cfg, 1, g, fed.travel, fed.trainable,
                        torch.Generator().manual_seed(0))
    fed.client.fit(ctx)
    for n, p in named.items():
        if param_group(n) == "adapter.teacher":
            assert p.grad is None and not p.requires_grad
            # the teacher is the round's global A_S, unchanged by training
            assert torch.equal(p, g[n.replace(".teacher.", ".shared.")])
    for n, before in frozen_before.items():
        assert torch.equal(named[n], before), n


def test_evaluation_does_not_change_what_trains(tiny_cfg, tmp_path):
    fed = _fed(tiny_cfg)
    flags = {n: p.requires_grad for n, p in fed.model.named_parameters()}
    fed.model.train()
    g = get_params(fed.model, fed.travel)
    from fedvl.transport.inprocess import evaluate_all

    evaluate_all(fed, ClientStateStore(tmp_path / "s"), g)
    assert flags == {n: p.requires_grad for n, p in fed.model.named_parameters()}


def test_dat_mix_by_hand(tiny_cfg):
    """The DAT score uses h + w·A_C(h) + (1-w)·Â_S(h) with Â_S = A_S."""
    fed = _fed(tiny_cfg, "algorithm.dat_weight=0.25")
    model = fed.model
    for n, p in model.named_parameters():
        if ".adapters." in n:
            torch.nn.init.normal_(p, std=0.3)
    copy_shared_to_teacher(model)
    site = model.text.encoder.layer[0].output
    assert torch.equal(site.adapters["teacher"].up.weight, site.adapters["shared"].up.weight)
    model.eval()
    model.set_adapter_mix(fed.client._dat_mix())
    x = torch.randn(1, 2, site.dense.in_features)
    r = torch.randn(1, 2, site.dense.out_features)
    h = site.dense(x)
    want = site.LayerNorm(h + 0.25 * site.adapters["local"](h) + 0.75 * site.adapters["shared"](h) + r)
    assert torch.allclose(site(x, r), want, atol=1e-6)


@pytest.mark.parametrize("extra", [["algorithm.feddat_teacher=local"], ["algorithm.feddat_mutual=false"]])
def test_ablations_run_and_differ(tiny_cfg, tmp_path, extra):
    full = build_federation(tiny_cfg("algorithm.name=feddat"), status=lambda s: None)
    (tmp_path / "a").mkdir()
    a = simulate(full, tmp_path / "a", History(tmp_path / "a"))
    abl = build_federation(tiny_cfg("algorithm.name=feddat", *extra), status=lambda s: None)
    (tmp_path / "b").mkdir()
    b = simulate(abl, tmp_path / "b", History(tmp_path / "b"))
    assert a["train_loss"] != b["train_loss"]


def test_round_reports_its_distillation(tiny_cfg, tmp_path):
    """Each client's round reports CE and KD of both steps and A_S/DAT agreement. Their means add up to
    the A_S loss; with DAT weight 0 and one step, the teacher (Â_S = A_S at the round's start) and A_S
    give the same logits: KD exactly 0, agreement 1. Without mutual KD there is no KD(DAT <- A_S)."""
    fed = _fed(tiny_cfg, "algorithm.rounds=1")
    lam = fed.cfg.algorithm.kd_weight
    _, rec = run_round(fed, ClientStateStore(tmp_path / "a"), 1, get_params(fed.model, fed.travel))
    for m in rec["train"].values():
        assert m["train_loss"] == pytest.approx((1 - lam) * m["ce_shared"] + lam * m["kd_shared"], rel=1e-5)
        assert m["kd_shared"] > 0 and m["kd_dat"] > 0 and 0 <= m["agree_shared_dat"] <= 1
    fed = _fed(tiny_cfg, "algorithm.rounds=1", "algorithm.dat_weight=0", "algorithm.local_steps=1",
               "algorithm.feddat_mutual=false")
    _, rec = run_round(fed, ClientStateStore(tmp_path / "b"), 1, get_params(fed.model, fed.travel))
    for m in rec["train"].values():
        assert m["kd_shared"] == pytest.approx(0.0, abs=1e-6) and m["agree_shared_dat"] == 1.0
        assert "kd_dat" not in m and m["ce_dat"] > 0


def test_also_travel_shares_the_connector_but_never_a_c(tiny_cfg):
    from fedvl.transport.inprocess import build_federation

    fed = build_federation(tiny_cfg("algorithm.name=feddat", "algorithm.also_travel=connector"), status=lambda s: None)
    groups = {param_group(n) for n in fed.travel}
    assert groups == {"adapter.shared", "connector"}
    assert not any(param_group(n) == "adapter.local" for n in fed.travel)
    with pytest.raises(ConfigError, match="also_travel"):
        tiny_cfg("algorithm.name=feddat", "algorithm.also_travel=adapter.local")


def test_shared_encoder_pass_matches_three_passes(tiny_cfg, tmp_path, tiny_vl_base):
    """With the connector frozen (the VL base) one encoder forward serves the teacher and the A_C step:
    with dropout off (the tiny model) every parameter after a client's round is the three-pass one."""
    after = {}
    for shared in (True, False):
        fed = _fed(tiny_cfg, f"algorithm.feddat_shared_pass={str(shared).lower()}", "algorithm.rounds=1",
                   "model.base=vl", f"model.base_weights={tiny_vl_base}")
        assert not any(param_group(n) == "connector" for n in fed.trainable)
        calls = []
        encode = fed.model.encode
        fed.model.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)  # count encoder forwards
        g = get_params(fed.model, fed.travel)
        store = ClientStateStore(tmp_path / f"s{shared}")
        new, rec = run_round(fed, store, 1, g)
        after[shared] = (new, rec["train_loss"], len(calls))
    (a, la, ca), (b, lb, cb) = after[True], after[False]
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert la == pytest.approx(lb, rel=1e-6)
    batches = 4 * math.ceil(12 * 3 / 8)  # 4 clients x 36 questions in batches of 8, one epoch
    evals = cb - 3 * batches  # the evaluation's forwards, the same in both
    assert evals > 0 and ca == 2 * batches + evals  # 2 encoder forwards per batch instead of 3
