"""Server optimizers (algorithm.server_opt) on hand-computed tensors."""

import pytest
import torch

from fedvl.algorithms.server_opt import ServerOptimizer, fedadam_step, fedavgm_step, server_optimizer
from fedvl.config import load_config
from fedvl.schema import ConfigError


def test_one_fedavgm_step_by_hand():
    g = {"w": torch.tensor([1.0, 2.0])}
    agg = {"w": torch.tensor([1.5, 1.0])}  # delta = [0.5, -1.0]
    m = {"w": torch.tensor([0.2, 0.0])}
    new, new_m = fedavgm_step(g, agg, m, lr=2.0, momentum=0.9)
    # m = 0.9 * [0.2, 0] + [0.5, -1] = [0.68, -1.0]; x = [1, 2] + 2 * m = [2.36, 0.0]
    assert torch.allclose(new_m["w"], torch.tensor([0.68, -1.0]))
    assert torch.allclose(new["w"], torch.tensor([2.36, 0.0]))
    assert new["w"].dtype == torch.float32 and torch.equal(g["w"], torch.tensor([1.0, 2.0]))  # inputs untouched


def test_one_fedadam_step_by_hand():
    g = {"w": torch.tensor([1.0, -1.0])}
    agg = {"w": torch.tensor([1.2, -1.4])}  # delta = [0.2, -0.4]
    zeros = {"w": torch.zeros(2)}
    new, m, v = fedadam_step(g, agg, zeros, zeros, lr=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    # m = 0.1 * delta = [0.02, -0.04]; v = 0.01 * delta^2 = [0.0004, 0.0016]; sqrt(v) + tau = [0.03, 0.05]
    # x = g + 0.1 * m / (sqrt(v) + tau) = [1 + 0.1 * 2/3, -1 - 0.1 * 0.8] = [1.0666667, -1.08]
    assert torch.allclose(m["w"], torch.tensor([0.02, -0.04]))
    assert torch.allclose(v["w"], torch.tensor([0.0004, 0.0016]))
    assert torch.allclose(new["w"], torch.tensor([1.0 + 0.2 / 3, -1.08]))


def test_optimizer_carries_its_state_and_restores_it():
    opt = ServerOptimizer("fedavgm", lr=1.0, momentum=0.5)
    g = {"w": torch.tensor([0.0])}
    g = opt.step(g, {"w": torch.tensor([1.0])})  # m = 1, x = 1
    g = opt.step(g, {"w": torch.tensor([1.0])})  # delta 0: m = 0.5, x = 1.5 (momentum carries on)
    assert g["w"].item() == 1.5 and opt.m["w"].item() == 0.5
    adam = ServerOptimizer("fedadam", lr=0.1, momentum=0.9, beta2=0.99, tau=1e-3)
    adam.step({"w": torch.tensor([0.0])}, {"w": torch.tensor([1.0])})
    # v starts at tau^2: 0.99e-6 + 0.01 * 1
    assert adam.v["w"].item() == pytest.approx(0.99e-6 + 0.01)
    saved = adam.state_tensors()
    assert set(saved) == {"m.w", "v.w"}
    fresh = ServerOptimizer("fedadam", lr=0.1, momentum=0.9)
    assert fresh.load_state_tensors(saved, ["w"]) and torch.equal(fresh.v["w"], adam.v["w"])
    # the other optimizer's state (a config change accepted on resume) is not taken for this one's
    assert not fresh.load_state_tensors(opt.state_tensors(), ["w"]) and fresh.m == {}


def test_nothing_travels_no_step_and_pooled_takes_none():
    opt = ServerOptimizer("fedadam", lr=1.0, momentum=0.9)
    assert opt.step({}, {}) == {} and opt.state_tensors() == {}
    cfg = load_config(None, ["model.name=tiny", "algorithm.server_opt=fedavgm"])
    assert server_optimizer(cfg, pooled=True) is None and server_optimizer(cfg, pooled=False).kind == "fedavgm"
    assert server_optimizer(load_config(None, ["model.name=tiny"]), pooled=False) is None  # the default: FedAvg


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.server_opt=sgd"], "algorithm.server_opt: 'sgd' is not one of 'none', 'fedavgm', 'fedadam'"),
    (["algorithm.server_momentum=1"], "algorithm.server_momentum must be in [0, 1), got 1.0"),
    (["algorithm.server_lr=0"], "algorithm.server_lr must be > 0"),
    (["algorithm.name=fedmmkt", "algorithm.server_opt=fedadam"],
     "fedmmkt exchanges knowledge, not parameters: leave algorithm.server_opt=none"),
])
def test_server_opt_options_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(None, ["model.name=tiny", *overrides])
