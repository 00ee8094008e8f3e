import math

import pytest
import torch

from fedvl.algorithms.aggregate import UpdateRejected, fedavg, validate_update, weighted_average


def test_weighted_average_by_hand():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.0]])}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([[4.0]])}
    out = weighted_average([a, b], [1.0, 3.0])
    # (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5.0, (0 + 3*4)/4 = 3.0
    assert torch.equal(out["w"], torch.tensor([2.5, 5.0]))
    assert torch.equal(out["b"], torch.tensor([[3.0]]))


def test_fedavg_weighted_and_uniform():
    ups = [{"x": torch.tensor([0.0])}, {"x": torch.tensor([10.0])}]
    assert fedavg(ups, [1, 4], "weighted")["x"].item() == pytest.approx(8.0)
    assert fedavg(ups, [1, 4], "uniform")["x"].item() == pytest.approx(5.0)


def test_average_keeps_dtype_and_is_exact_for_identical_updates():
    u = {"x": torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32)}
    out = weighted_average([u, u, u], [7, 1, 2])
    assert out["x"].dtype == torch.float32
    assert torch.equal(out["x"], u["x"])


def test_average_rejects_empty_and_bad_weights():
    with pytest.raises(ValueError):
        weighted_average([], [])
    with pytest.raises(ValueError):
        weighted_average([{"x": torch.zeros(1)}], [0.0])
    with pytest.raises(ValueError):
        weighted_average([{"x": torch.zeros(1)}], [math.nan])


REF = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}


@pytest.mark.parametrize(
    "update,n,reason",
    [
        ({"w": torch.zeros(2, 3)}, 5, "keys differ"),
        ({"w": torch.zeros(2, 3), "b": torch.zeros(3), "z": torch.zeros(1)}, 5, "keys differ"),
        ({"w": torch.zeros(3, 2), "b": torch.zeros(3)}, 5, "shape"),
        ({"w": torch.zeros(2, 3, dtype=torch.float64), "b": torch.zeros(3)}, 5, "dtype"),
        ({"w": torch.full((2, 3), float("nan")), "b": torch.zeros(3)}, 5, "NaN"),
        ({"w": torch.zeros(2, 3), "b": torch.tensor([0.0, float("inf"), 0.0])}, 5, "NaN or Inf"),
        ({"w": torch.zeros(2, 3), "b": torch.zeros(3)}, 0, "num_examples"),
    ],
)
def test_validate_update_rejects(update, n, reason):
    with pytest.raises(UpdateRejected, match=reason):
        validate_update(REF, update, n)


def test_validate_update_accepts_good():
    validate_update(REF, {"w": torch.ones(2, 3), "b": torch.ones(3)}, 3)
