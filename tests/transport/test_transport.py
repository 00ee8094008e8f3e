"""Half-precision transport: half the bytes up, the same model up to rounding, strict dtypes."""

import pytest
import torch

from fedvl.algorithms.base import FitResult
from fedvl.models.params import get_params
from fedvl.report.history import History
from fedvl.transport.inprocess import build_federation, client_fit, server_aggregate, simulate
from fedvl.rounds.state import ClientStateStore


def _run(cfg, run_dir):
    fed = build_federation(cfg, status=lambda s: None)
    run_dir.mkdir()
    return fed, simulate(fed, run_dir, History(run_dir))


@pytest.mark.parametrize("wire", ["float16", "bfloat16"])
def test_half_precision_transport_halves_bytes_and_barely_moves_the_result(wire, tiny_cfg, tmp_path):
    fed32, f32 = _run(tiny_cfg("algorithm.rounds=2"), tmp_path / "a")
    fed16, f16 = _run(tiny_cfg("algorithm.rounds=2", f"run.transport_dtype={wire}"), tmp_path / "b")
    assert fed16.param_report()["bytes_up_per_client_round"] * 2 == fed32.param_report()["bytes_up_per_client_round"]
    # the global model stays float32 and lands within rounding of the float32 run
    g32, g16 = get_params(fed32.model, fed32.travel), get_params(fed16.model, fed16.travel)
    assert all(g16[k].dtype == torch.float32 for k in g16)
    assert abs(f16["avg"]["acc"] - f32["avg"]["acc"]) <= 5.0


def test_what_leaves_the_client_is_half_and_a_full_precision_update_is_rejected(tiny_cfg, tmp_path):
    fed = build_federation(tiny_cfg("run.transport_dtype=float16", "algorithm.local_steps=1"), status=lambda s: None)
    g = get_params(fed.model, fed.travel)
    cid = fed.client_ids[0]
    res = client_fit(fed, ClientStateStore(tmp_path / "s"), cid, 1, g)
    assert {v.dtype for v in res.params.values()} == {torch.float16}
    wrong = FitResult({k: v.float() for k, v in res.params.items()}, res.num_examples, {})
    new, record = server_aggregate(fed, 1, g, {cid: res, fed.client_ids[1]: wrong})
    assert fed.client_ids[1] in record["rejected"] and "dtype" in record["rejected"][fed.client_ids[1]]
    # one accepted half-precision update: the new global is that update, upcast
    assert all(new[k].dtype == torch.float32 and torch.equal(new[k], res.params[k].float()) for k in new)
