"""Stacking the clients' LoRA products into the base weights (FLoRA, model.lora_aggregation=stack)."""

import math

import pytest
import torch

from fedvl.algorithms.flora import fresh_factors, merged_bases, stack_merge
from fedvl.finetune.federation import build_federation
from fedvl.models.params import get_params
from fedvl.schema import ConfigError

A, B, W = "m.q.lora_A.shared.weight", "m.q.lora_B.shared.weight", "m.q.base_layer.weight"
# two clients of ranks 1 and 2 on the tiny model, which holds rank 2 (scaling lora_alpha / 2 = 8)
STACK = ["model.peft=lora", "model.lora_rank=2", "model.client_lora_ranks=1,2", "model.lora_aggregation=stack",
         "data.num_clients=2", "data.domains=photo,sketch"]


def test_the_merged_base_is_the_weighted_sum_of_the_clients_products():
    # out=3, in=2, the model's rank R=2; client 1 holds rank 1 (what it has beyond it is ignored)
    g = {W: torch.ones(3, 2), A: torch.full((2, 2), 5.0), B: torch.full((3, 2), 5.0), "head.w": torch.zeros(1)}
    u1 = {A: torch.tensor([[1.0, 2.0], [9.0, 9.0]]), B: torch.tensor([[1.0, 7.0], [2.0, 7.0], [3.0, 7.0]]),
          "head.w": torch.tensor([1.0])}
    u2 = {A: torch.tensor([[1.0, 0.0], [0.0, 1.0]]), B: torch.tensor([[1.0, 1.0], [0.0, 2.0], [1.0, 0.0]]),
          "head.w": torch.tensor([3.0])}
    fresh = {A: torch.tensor([[0.5, -0.5], [0.25, 0.0]]), B: torch.zeros(3, 2)}
    got = stack_merge(g, [u1, u2], [1, 2], [1.0, 3.0], 2.0, fresh)  # weights 0.25, 0.75 once normalised
    # B1[:, :1] A1[:1] = [[1,2],[2,4],[3,6]], B2 A2 = B2; 0.25 * the first + 0.75 * the second:
    stacked = [[1.0, 1.25], [0.5, 2.5], [1.5, 1.5]]
    assert got[W].tolist() == [[1 + 2 * v for v in row] for row in stacked]  # [[3, 3.5], [2, 6], [4, 4]]
    assert torch.equal(got[A], fresh[A]) and torch.equal(got[B], fresh[B])  # the next round starts afresh
    assert got["head.w"].tolist() == [0.25 * 1 + 0.75 * 3]
    assert list(got) == list(g) and g[W].tolist() == [[1.0, 1.0]] * 3  # the input is untouched
    # averaging A and B separately (the rank-1 client's components beyond its rank zero) gives
    # Bbar @ Abar = [[1, 1.0625], [0.5, 1.375], [1.5, 0.75]]: the cross terms B_j A_k no client trained
    a_bar = 0.25 * torch.tensor([[1.0, 2.0], [0.0, 0.0]]) + 0.75 * u2[A]
    b_bar = 0.25 * torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]) + 0.75 * u2[B]
    assert (b_bar @ a_bar).tolist() == [[1.0, 1.0625], [0.5, 1.375], [1.5, 0.75]]
    assert not torch.allclose(got[W], g[W] + 2.0 * b_bar @ a_bar)


def test_equal_ranks_merge_every_client_whole():
    g = {W: torch.zeros(2, 2), A: torch.zeros(1, 2), B: torch.zeros(2, 1)}
    u1 = {A: torch.tensor([[1.0, 0.0]]), B: torch.tensor([[2.0], [0.0]])}
    u2 = {A: torch.tensor([[0.0, 1.0]]), B: torch.tensor([[0.0], [4.0]])}
    got = stack_merge(g, [u1, u2], [1, 1], [1.0, 1.0], 1.0, {A: torch.zeros(1, 2), B: torch.zeros(2, 1)})
    assert got[W].tolist() == [[1.0, 0.0], [0.0, 2.0]]  # 0.5 * [[2,0],[0,0]] + 0.5 * [[0,0],[0,4]]


def test_fresh_factors_are_peft_s_init_drawn_from_the_seed_and_round():
    g = {A: torch.zeros(4, 9), B: torch.ones(6, 4), W: torch.ones(6, 9)}
    f = fresh_factors(g, 7, 3)
    assert list(f) == [A, B] and torch.equal(f[B], torch.zeros(6, 4))
    assert f[A].abs().max() <= 1 / math.sqrt(9) and f[A].std() > 0  # U(-1/sqrt(in), 1/sqrt(in))
    assert torch.equal(fresh_factors(g, 7, 3)[A], f[A]) and not torch.equal(fresh_factors(g, 7, 4)[A], f[A])
    from fedvl.seeding import derived_seed

    torch.manual_seed(derived_seed(7, "lora-init", 3, A))  # peft's own init, from the global generator
    peft_a = torch.nn.init.kaiming_uniform_(torch.empty(4, 9), a=math.sqrt(5))
    assert torch.equal(f[A], peft_a)


def test_the_bases_merged_are_those_of_the_travelling_factors():
    travel = [A, B, "m.k.lora_A.shared.weight", "m.k.lora_B.shared.weight", "head.w"]
    assert merged_bases(travel) == [W, "m.k.base_layer.weight"]


def test_stacking_settings_are_checked_in_one_line(tiny_cfg):
    tiny_cfg("model.peft=lora", "model.lora_aggregation=stack")  # equal ranks are fine
    for extra, message in [
        (["model.peft=adapter"], "needs model.peft=lora"),
        (["model.peft=lora", "algorithm.aggregator=median"], "aggregator=mean"),
        (["model.peft=lora", "algorithm.clip_update_norm=1"], "clip_update_norm"),
        (["model.peft=lora", "privacy.enabled=true"], "privacy.enabled"),
        (["model.peft=lora", "run.runtime=flower-sim", "run.secagg=true"], "run.secagg"),
        (["model.peft=lora", "algorithm.server_opt=fedadam"], "server_opt=fedadam"),
    ]:
        with pytest.raises(ConfigError, match=message) as e:
            tiny_cfg("model.lora_aggregation=stack", *extra)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="4 clients"):  # the ranks' own checks still run
        tiny_cfg("model.peft=lora", "model.lora_aggregation=stack", "model.client_lora_ranks=1,2")


def test_a_round_merges_the_stacked_product_of_the_clients_replies(tiny_cfg, tmp_path):
    from fedvl.rounds.state import ClientStateStore
    from fedvl.transport.inprocess import run_round

    cfg = tiny_cfg(*STACK, "algorithm.rounds=1")
    fed = build_federation(cfg, status=lambda s: None)
    bases = fed.down_only
    assert len(bases) == 4 and all(n.endswith(".base_layer.weight") for n in bases)  # query, value x 2 layers
    named = dict(fed.model.named_parameters())
    assert not any(named[n].requires_grad for n in bases)  # frozen on the client
    scaling = cfg.model.lora_alpha / cfg.model.lora_rank
    assert {m.scaling["shared"] for m in fed.model.modules() if hasattr(m, "lora_A")} == {scaling}  # peft's
    replies = {}
    fit = fed.client.fit

    def capture(ctx):
        replies[ctx.client_id] = res = fit(ctx)
        return res

    fed.client.fit = capture
    start = get_params(fed.model, fed.down)
    new, record = run_round(fed, ClientStateStore(tmp_path / "states"), 1, start)
    assert set(replies) == {"c0-photo", "c1-sketch"}
    assert all(set(r.params) == set(fed.travel) for r in replies.values())  # no base weight comes back
    ranks = {"c0-photo": 1, "c1-sketch": 2}
    total = sum(r.num_examples for r in replies.values())
    for base in bases:
        module = base.removesuffix(".base_layer.weight")
        a, b = f"{module}.lora_A.shared.weight", f"{module}.lora_B.shared.weight"
        product = sum(r.num_examples / total * (r.params[b][:, :ranks[c]].double() @ r.params[a][:ranks[c]].double())
                      for c, r in replies.items())
        assert torch.allclose(new[base].double(), start[base].double() + scaling * product, atol=1e-6)
        assert (new[base] - start[base]).abs().max() > 1e-4  # the clients moved it
        a_bar = sum(r.num_examples / total * r.params[a].double() for r in replies.values())
        b_bar = sum(r.num_examples / total * r.params[b].double() for r in replies.values())
        assert not torch.allclose(start[base].double() + scaling * b_bar @ a_bar, new[base].double(), atol=1e-6)
    fresh = fresh_factors(start, cfg.run.seed, 1)
    for n in fed.travel:
        if ".lora_" in n:
            assert torch.equal(new[n], fresh[n])
        else:  # e.g. the head: the sample-weighted mean
            mean = sum(r.num_examples / total * r.params[n].double() for r in replies.values())
            assert torch.allclose(new[n].double(), mean, atol=1e-6)
    assert all(math.isfinite(m["acc"]) for m in record["eval"].values())


@pytest.mark.slow
def test_a_stacked_run_resumes_and_flower_gives_the_same_numbers(tiny_cfg, tmp_path):
    import shutil

    from fedvl.experiment import run_experiment
    from fedvl.report.history import History
    from fedvl.rounds.checkpoint import checkpoint_dirs, latest_checkpoint
    from fedvl.transport.inprocess import simulate

    cfg = tiny_cfg(*STACK)
    sim = run_experiment(cfg, tmp_path / "sim", progress_enabled=False)
    assert math.isfinite(sim["final"]["avg"]["acc"])
    p = sim["params"]
    fed = build_federation(cfg, status=lambda s: None)
    base_bytes = sum(4 * t.numel() for t in get_params(fed.model, fed.down_only).values())
    assert p["bytes_down_per_client_round"] == p["bytes_up_per_client_round"] + base_bytes
    # the checkpoint holds the merged bases; resuming round 2 from round 1 lands where the run did
    assert set(fed.down_only) <= set(latest_checkpoint(tmp_path / "sim", fed.down, print).global_params)
    shutil.rmtree(checkpoint_dirs(tmp_path / "sim")[0][1])
    again = simulate(fed, tmp_path / "sim", History(tmp_path / "sim"), resume=True, warn=lambda m: None)
    assert again["avg"] == pytest.approx(sim["final"]["avg"], abs=1e-6)
    flw = run_experiment(tiny_cfg(*STACK, "run.runtime=flower-sim"), tmp_path / "flw", progress_enabled=False)
    evals = [[(r["round"], r["eval"]) for r in History.read(tmp_path / d) if "eval" in r] for d in ("sim", "flw")]
    assert [r for r, _ in evals[0]] == [r for r, _ in evals[1]] == [1, 2]
    for (_, ea), (_, eb) in zip(*evals):
        for cid in ea:
            for k, v in ea[cid].items():
                assert eb[cid][k] == pytest.approx(v, abs=1e-6), (cid, k)


def test_worker_processes_train_on_the_merged_bases_that_came_down(tiny_cfg, tmp_path):
    from fedvl.finetune.exchange import client_fit
    from fedvl.rounds.state import ClientStateStore

    fed = build_federation(tiny_cfg(*STACK, "algorithm.local_steps=2", "algorithm.local_epochs=0"),
                           status=lambda s: None)
    first = get_params(fed.model, fed.down)
    gen = torch.Generator().manual_seed(0)  # (not a constant: the text layers' inputs are LayerNorm'd, mean 0)
    later = {n: t + 0.3 * torch.randn(t.shape, generator=gen) if n in fed.down_only else t  # as if a round
             for n, t in first.items()}  # had merged something
    losses = []
    try:
        # the pool starts (its replicas read once) with the first bases; a later round's must reach them
        for procs, down in ((2, first), (2, later), (1, later)):
            fed.cfg.run.client_procs = procs
            seen: list[float] = []
            client_fit(fed, ClientStateStore(tmp_path / f"s{len(losses)}"), "c1-sketch", 1, down,
                       on_step=lambda done, total, loss: seen.append(loss))
            losses.append(seen)
    finally:
        fed.close()
    assert len(losses[2]) == 2 and losses[1] == pytest.approx(losses[2], rel=1e-5)
    assert losses[0][0] != pytest.approx(losses[2][0], rel=1e-3)  # the bases change the loss
