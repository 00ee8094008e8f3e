"""The Flower runtime runs the same algorithm code as the simulator and gives the same numbers."""

import os

import pytest
import torch

from fedvl.experiment import run_experiment
from fedvl.report.history import History


def _evals(run_dir):
    return [(r["round"], r["eval"]) for r in History.read(run_dir) if "eval" in r]


def test_flower_never_phones_home():
    import fedvl.transport.flower  # noqa: F401

    assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"
    assert os.environ["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"


def test_codec_round_trip_keeps_values_dtypes_and_keys():
    from fedvl.transport.flower import from_record, to_record

    params = {"a.weight": torch.randn(3, 4), "b.bias": torch.arange(5, dtype=torch.float64), "c": torch.ones(2).half()}
    back = from_record(to_record(params))
    assert list(back) == list(params)
    for k in params:
        assert back[k].dtype == params[k].dtype and torch.equal(back[k], params[k])


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["fedavg", "feddat"])
def test_flower_simulation_gives_the_simulators_metrics(algo, tiny_cfg, tmp_path):
    sim = run_experiment(tiny_cfg(f"algorithm.name={algo}"), tmp_path / "sim", progress_enabled=False)
    flw = run_experiment(tiny_cfg(f"algorithm.name={algo}", "run.runtime=flower-sim"), tmp_path / "flw",
                         progress_enabled=False)
    a, b = _evals(tmp_path / "sim"), _evals(tmp_path / "flw")
    assert [r for r, _ in a] == [r for r, _ in b] == [1, 2]
    for (_, ea), (_, eb) in zip(a, b):
        assert ea.keys() == eb.keys()
        for cid in ea:
            for k, v in ea[cid].items():
                assert eb[cid][k] == pytest.approx(v, abs=1e-6), (cid, k)
    assert flw["final"]["avg"]["acc"] == pytest.approx(sim["final"]["avg"]["acc"], abs=1e-6)
    if algo == "feddat":  # A_C stayed on the clients between rounds: one state file per client
        assert len(list((tmp_path / "flw" / "client_states").glob("*.safetensors"))) == 4


@pytest.mark.slow
def test_a_failing_client_is_dropped_and_too_few_stop_the_run(tiny_cfg, tmp_path, monkeypatch):
    import fedvl.transport.flower as flower
    from fedvl.finetune import exchange as parameters
    from fedvl.transport.inprocess import client_fit

    def flaky(fed, store, cid, rnd, params, on_step=None):
        if cid.startswith("c1"):
            raise ConnectionError("node went away")
        return client_fit(fed, store, cid, rnd, params, on_step)

    monkeypatch.setattr(parameters, "client_fit", flaky)  # what every node's fit runs
    run_experiment(tiny_cfg("run.runtime=flower-sim"), tmp_path / "ok", progress_enabled=False)
    hist = History.read(tmp_path / "ok")
    assert all("c1-sketch" in r["dropped"] and "node went away" in r["dropped"]["c1-sketch"] for r in hist)
    assert all(sorted(r["train"]) == ["c0-photo", "c2-night", "c3-painting"] for r in hist)
    with pytest.raises(flower.FlowerRunError, match="fewer than run.min_clients=4 after 2 attempt"):
        run_experiment(tiny_cfg("run.runtime=flower-sim", "run.min_clients=4"), tmp_path / "stop",
                       progress_enabled=False)


def test_pooled_algorithms_cannot_be_federated(tiny_cfg):
    from fedvl.schema import ConfigError

    with pytest.raises(ConfigError, match="pools every client's data"):
        tiny_cfg("algorithm.name=centralized", "run.runtime=flower-sim")


def test_ray_backend_without_ray_is_one_clear_line_and_inprocess_needs_no_ray(tiny_cfg, tmp_path, monkeypatch):
    """Ray is not a dependency: the default in-process backend must never import it, and asking
    for the Ray backend without it installed stops with one line (CI has no Ray)."""
    import importlib.util
    import sys

    from fedvl.schema import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ray" else real(n, *a))
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` now fails, as on a clean machine
    with pytest.raises(ConfigError, match="flower_backend=ray needs Ray"):
        run_experiment(tiny_cfg("run.runtime=flower-sim", "run.flower_backend=ray", "algorithm.rounds=1"),
                       tmp_path / "ray", progress_enabled=False)
    out = run_experiment(tiny_cfg("run.runtime=flower-sim", "algorithm.rounds=1"), tmp_path / "inproc",
                         progress_enabled=False)
    assert 0.0 <= out["final"]["avg"]["acc"] <= 100.0
    from fedvl.transport.flower import InProcessBackend

    # the stand-in backend module is gone again after the run
    left = sys.modules.get("flwr.server.superlink.fleet.vce.backend.raybackend")
    assert getattr(left, "RayBackend", None) is not InProcessBackend
