"""Different LoRA ranks on different clients: zero-padding, rank-aware mean (hand-computed)."""

import pytest
import torch
from conftest import vlm_overrides

from fedvl.algorithms.hetlora import limited_rank, rank_aware_mean, truncate
from fedvl.config import load_config
from fedvl.schema import ConfigError

A, B = "m.q.lora_A.shared.weight", "m.q.lora_B.shared.weight"


def test_truncate_zeroes_the_components_beyond_a_clients_rank():
    p = {A: torch.arange(1.0, 7.0).view(3, 2), B: torch.arange(1.0, 7.0).view(2, 3), "head.w": torch.ones(2)}
    t = truncate(p, 2)
    assert t[A].tolist() == [[1, 2], [3, 4], [0, 0]]  # rows are rank components of A (R x in)
    assert t[B].tolist() == [[1, 2, 0], [4, 5, 0]]  # columns of B (out x R)
    assert torch.equal(t["head.w"], p["head.w"])


def test_each_rank_component_is_averaged_over_the_clients_that_hold_it():
    u1 = {A: torch.tensor([[2.0], [0.0]]), "w": torch.tensor([1.0])}  # rank 1: its row 2 is padding
    u2 = {A: torch.tensor([[4.0], [6.0]]), "w": torch.tensor([3.0])}  # rank 2
    got = rank_aware_mean([u1, u2], [1, 2], [1.0, 3.0])
    assert got[A].tolist() == [[(1 * 2 + 3 * 4) / 4], [6.0]]  # row 2: only the rank-2 client holds it
    assert got["w"].tolist() == [(1 * 1 + 3 * 3) / 4]
    # a plain mean of the padded factors would have shrunk row 2 to 4.5: the reason for the rule
    assert got[A][1].item() != pytest.approx((1 * 0 + 3 * 6) / 4)


def test_a_limited_rank_client_never_moves_the_components_it_does_not_hold():
    lin = torch.nn.Linear(3, 4, bias=False)  # named q.lora_A.shared.weight below, as peft names a factor
    model = torch.nn.ModuleDict({"q": torch.nn.ModuleDict({"lora_A": torch.nn.ModuleDict({"shared": lin})})})
    name = "q.lora_A.shared.weight"
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    with limited_rank(model, [name], 2):
        for _ in range(3):
            loss = lin(torch.ones(1, 3)).pow(2).sum() - lin.weight.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    w = lin.weight
    assert (w[2:] == 0).all() and (w[:2] != 0).all()
    assert not w._backward_hooks  # the hooks are gone after the block


def test_clients_of_different_ranks_train_and_the_server_keeps_the_top_components(vlm_checkpoint, tmp_path):
    from fedvl.report.history import History
    from fedvl.transport.inprocess import build_federation, simulate

    cfg = load_config(None, vlm_overrides(vlm_checkpoint("llava"), tmp_path, "model.lora_rank=4",
                                          "model.client_lora_ranks=1,2,4,4", "algorithm.rounds=1"))
    fed = build_federation(cfg, status=lambda s: None)
    run = tmp_path / "run"
    run.mkdir()
    rec = simulate(fed, run, History(run))
    assert {cid: m["lora_rank"] for cid, m in rec["train"].items()} == \
        {"c0-photo": 1.0, "c1-sketch": 2.0, "c2-night": 4.0, "c3-painting": 4.0}
    named = dict(fed.model.named_parameters())
    a_names = [n for n in fed.travel if ".lora_A." in n]
    assert a_names and all(named[n].shape[0] == 4 for n in a_names)


def test_rank_settings_are_checked_in_one_line(tiny_cfg):
    with pytest.raises(ConfigError, match="4 clients"):
        tiny_cfg("model.peft=lora", "model.client_lora_ranks=1,2")
    with pytest.raises(ConfigError, match="1..model.lora_rank"):
        tiny_cfg("model.peft=lora", "model.lora_rank=4", "model.client_lora_ranks=1,2,8,4")
    with pytest.raises(ConfigError, match="needs model.peft=lora"):
        tiny_cfg("model.peft=adapter", "model.client_lora_ranks=1,2,4,4")
    with pytest.raises(ConfigError, match="aggregator=mean"):
        tiny_cfg("model.peft=lora", "model.lora_rank=4", "model.client_lora_ranks=1,2,4,4",
                 "algorithm.aggregator=median")
