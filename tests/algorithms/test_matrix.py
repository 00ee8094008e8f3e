"""One matrix over every registered algorithm on the tiny model (a new algorithm adds a row)."""

import pytest
import torch

from fedvl.algorithms import available_algorithms, get_algorithm
from fedvl.models.params import param_group
from fedvl.report.history import History
from fedvl.transport.inprocess import build_federation, simulate

# what each algorithm must send: "all" trainable, or nothing
EXPECTED_TRAVEL = {"fedavg": "all", "fedprox": "all", "centralized": "all", "local": "none", "feddat": "shared"}
KT_TRAVEL = {"fedmmkt": "report", "kt-distill": "report", "kt-local": "none", "kt-fedavg": "weights",
             "kt-centralized": "data"}


def test_every_registered_algorithm_has_a_row():
    # the knowledge-transfer family runs its own matrix in tests/fedmmkt/test_kt.py
    assert set(available_algorithms()) == set(EXPECTED_TRAVEL) | set(KT_TRAVEL)
    assert set(KT_TRAVEL) == {n for n in available_algorithms() if get_algorithm(n).family == "knowledge"}


def _run(cfg, run_dir):
    fed = build_federation(cfg, status=lambda s: None)
    backbone = {n: p.detach().clone() for n, p in fed.model.named_parameters() if param_group(n) in ("backbone", "vision")}
    run_dir.mkdir(parents=True, exist_ok=True)
    final = simulate(fed, run_dir, History(run_dir))
    return fed, final, backbone


@pytest.mark.parametrize("name", sorted(EXPECTED_TRAVEL))
def test_algorithm_runs_learns_and_leaves_backbone_untouched(name, tiny_cfg, tmp_path):
    cfg = tiny_cfg(f"algorithm.name={name}", "algorithm.rounds=3")
    fed, final, backbone = _run(cfg, tmp_path / "a")
    algo = get_algorithm(name)
    if EXPECTED_TRAVEL[name] == "all":
        assert fed.travel == fed.trainable
    elif EXPECTED_TRAVEL[name] == "shared":
        assert fed.travel and {param_group(n) for n in fed.travel} == {"adapter.shared"}
    else:
        assert fed.travel == []
    named = dict(fed.model.named_parameters())
    for n, before in backbone.items():
        assert torch.equal(named[n], before), n
    hist = History.read(tmp_path / "a")
    assert len(hist) == 3
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]  # it learns on its own data
    for m in final["eval"].values():
        assert 0.0 <= m["acc"] <= 1.0
    if algo.pooled:
        assert hist[0]["sampled"] == ["pooled"]
    else:
        assert hist[0]["sampled"] == list(fed.test)


@pytest.mark.parametrize("name", sorted(EXPECTED_TRAVEL))
def test_same_seed_same_metrics(name, tiny_cfg, tmp_path):
    cfg = tiny_cfg(f"algorithm.name={name}")
    _, a, _ = _run(cfg, tmp_path / "a")
    _, b, _ = _run(cfg, tmp_path / "b")
    assert a["eval"] == b["eval"]
    _, c, _ = _run(tiny_cfg(f"algorithm.name={name}", "run.seed=1"), tmp_path / "c")
    assert c["eval"] != a["eval"]


# The paper's FedAvg-PEFT baselines: every PEFT option runs the whole federated loop.
PEFT_METHODS = ["adapter", "lora", "bitfit", "layernorm", "prompt", "head", "full"]


def test_every_peft_option_has_a_row():
    from typing import get_args

    from fedvl.schema import PeftMethod

    assert set(get_args(PeftMethod)) == set(PEFT_METHODS)


@pytest.mark.parametrize("peft", PEFT_METHODS)
def test_fedavg_peft_baseline_runs_and_learns(peft, tiny_cfg, tmp_path):
    cfg = tiny_cfg("algorithm.name=fedavg", f"model.peft={peft}", "algorithm.rounds=3")
    fed, final, backbone = _run(cfg, tmp_path / "a")
    assert fed.travel == fed.trainable and fed.trainable
    named = dict(fed.model.named_parameters())
    changed = {n for n, before in backbone.items() if not torch.equal(named[n], before)}
    # only full fine-tuning and the backbone-internal methods (bitfit, layernorm) touch backbone tensors
    if peft in ("adapter", "lora", "prompt", "head"):
        assert not changed
    elif peft == "full":
        assert changed
    else:
        assert changed and all(n in fed.trainable for n in changed)
    hist = History.read(tmp_path / "a")
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert all(0.0 <= m["acc"] <= 1.0 for m in final["eval"].values())
