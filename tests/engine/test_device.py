"""run.device and run.precision: where the compute runs, in which precision, and
that everything leaving a model (updates, client state, checkpoints) stays float32 on the CPU."""

import pytest
import torch
from safetensors.torch import load_file

from fedvl.engine.device import Amp, DeviceError, resolve_device
from fedvl.experiment import run_experiment
from fedvl.schema import ConfigError
from fedvl.transport.inprocess import build_federation, client_fit, client_evaluate
from fedvl.rounds.state import ClientStateStore
from fedvl.models.params import get_params
from fedvl.report.history import History

NO_CUDA = not torch.cuda.is_available()


def test_auto_and_cpu_resolve_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cpu" if NO_CUDA else "cuda")


@pytest.mark.parametrize("spec,message", [
    ("gpu", "run.device must be auto, cpu, cuda or cuda:N"),
    ("cuda:x", "run.device must be auto, cpu, cuda or cuda:N"),
    ("cuda:99", "CUDA device"),
])
def test_bad_device_is_one_line(tiny_cfg, spec, message):
    if spec == "cuda:99" and NO_CUDA:
        message = "no CUDA device"
    with pytest.raises(ConfigError, match=message) as e:
        tiny_cfg(f"run.device={spec}")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not NO_CUDA, reason="checks the CPU-only machine's refusal")
def test_cuda_and_fp16_refused_without_a_gpu(tiny_cfg):
    with pytest.raises(ConfigError, match="no CUDA device on this machine"):
        tiny_cfg("run.device=cuda")
    with pytest.raises(ConfigError, match="run.precision=fp16 needs a CUDA device"):
        tiny_cfg("run.precision=fp16")
    with pytest.raises(DeviceError):
        Amp("cpu", "fp16")
    # a deployment's server never trains: a GPU asked for its nodes is not checked here
    assert tiny_cfg("run.device=cuda:1", "run.runtime=flower-deploy").run.device == "cuda:1"


def _head_dtypes(fed):
    seen = []
    fed.model.head["vqa"].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


@pytest.mark.parametrize("transport", ["float32", "bfloat16"])
def test_bf16_autocasts_but_what_leaves_the_model_is_float32_cpu(tiny_cfg, tmp_path, transport):
    cfg = tiny_cfg("algorithm.name=feddat", "run.device=cpu", "run.precision=bf16",
                   f"run.transport_dtype={transport}")
    fed = build_federation(cfg, status=lambda s: None)
    seen = _head_dtypes(fed)
    store = ClientStateStore(tmp_path / "states")
    cid = fed.client_ids[0]
    g = get_params(fed.model, fed.travel)
    res = client_fit(fed, store, cid, 1, g)
    assert seen and set(seen) == {torch.bfloat16}  # the forward passes ran in bfloat16
    # the model's own parameters stay float32 (autocast casts activations, not weights)
    assert {p.dtype for p in fed.model.parameters()} == {torch.float32}
    # what travels has run.transport_dtype's meaning only, whatever the compute precision
    assert {t.dtype for t in res.params.values()} == {getattr(torch, transport)}
    assert {t.device.type for t in res.params.values()} == {"cpu"}
    state = load_file(tmp_path / "states" / f"{cid}.safetensors")  # FedDAT's A_C, head, connector
    assert state and {t.dtype for t in state.values()} == {torch.float32}
    assert res.metrics["train_loss"] > 0 and torch.isfinite(torch.tensor(res.metrics["train_loss"]))
    m = client_evaluate(fed, store, cid, g)
    assert 0.0 <= m["acc"] <= 1.0 and seen[-1] == torch.bfloat16


def test_fp32_has_no_autocast(tiny_cfg):
    fed = build_federation(tiny_cfg("run.device=cpu"), status=lambda s: None)
    seen = _head_dtypes(fed)
    client_evaluate(fed, ClientStateStore(fed.cfg.run.cache_dir), fed.client_ids[0], {})
    assert set(seen) == {torch.float32}


@pytest.mark.parametrize("algo", ["fedavg", "feddat"])
def test_bf16_on_cpu_trains_close_to_fp32(tiny_cfg, tmp_path, algo):
    """Same seed, bf16 vs fp32 on the tiny model: the loss goes down in both, and the
    training loss and accuracy agree within bfloat16's precision (8 bits of mantissa)."""
    out = {}
    for prec in ("fp32", "bf16"):
        cfg = tiny_cfg(f"algorithm.name={algo}", "run.device=cpu", f"run.precision={prec}", "algorithm.rounds=3",
                       f"run.name={prec}")
        out[prec] = run_experiment(cfg, tmp_path / "results" / prec, progress_enabled=False)
    hist = {p: History.read(tmp_path / "results" / p) for p in out}
    for p in hist:
        assert hist[p][-1]["train_loss"] < hist[p][0]["train_loss"]  # both learn
    for a, b in zip(hist["fp32"], hist["bf16"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
    fa, fb = out["fp32"]["final"]["avg"], out["bf16"]["final"]["avg"]
    assert abs(fa["acc"] - fb["acc"]) <= 0.08 and fa["loss"] == pytest.approx(fb["loss"], rel=0.05)


@pytest.mark.cuda
@pytest.mark.parametrize("algo", ["fedavg", "feddat"])
def test_cpu_and_cuda_rounds_agree(tiny_cfg, tmp_path, algo):
    """One tiny round on each device from the same seed: the same metrics within float tolerance,
    and the CUDA run's client state loads on the CPU."""
    out = {}
    for dev in ("cpu", "cuda"):
        cfg = tiny_cfg(f"algorithm.name={algo}", f"run.device={dev}", "algorithm.rounds=1", f"run.name={dev}",
                       f"run.cache_dir={tmp_path / dev}")
        out[dev] = run_experiment(cfg, tmp_path / "results" / dev, progress_enabled=False)["final"]
    # the tolerance benchmarks/device.py states: cuDNN may pick other (TF32) convolution kernels for the
    # vision features, so a question or two may flip
    assert out["cuda"]["train_loss"] == pytest.approx(out["cpu"]["train_loss"], rel=1e-2)
    assert out["cuda"]["avg"]["acc"] == pytest.approx(out["cpu"]["avg"]["acc"], abs=0.05)
    for f in (tmp_path / "results" / "cuda" / "client_states").glob("*.safetensors"):
        assert {t.device.type for t in load_file(f).values()} == {"cpu"}


@pytest.mark.cuda
def test_fp16_on_cuda_trains_with_gradient_scaling(tiny_cfg, tmp_path):
    cfg = tiny_cfg("run.device=cuda", "run.precision=fp16", "algorithm.rounds=2")
    fed = build_federation(cfg, status=lambda s: None)
    assert fed.amp.scaler is not None and next(fed.model.parameters()).is_cuda
    res = run_experiment(cfg, tmp_path / "results" / "fp16", progress_enabled=False)["final"]
    assert 0.0 < res["train_loss"] < 10


def test_cli_refuses_cuda_in_one_line_before_any_results_folder(tmp_path):
    import subprocess
    import sys

    from conftest import TINY

    if not NO_CUDA:
        pytest.skip("this machine has a GPU")
    r = subprocess.run([sys.executable, "-m", "fedvl", "run", *TINY, "run.device=cuda:0"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "run.device=cuda:0: no CUDA device" in lines[0]
    assert not (tmp_path / "results").exists()


def test_ray_resources_come_from_the_config(tiny_cfg, monkeypatch):
    from fedvl.transport.flower import ray_backend_config

    cfg = tiny_cfg("run.runtime=flower-sim", "run.flower_backend=ray", "run.flower_workers=3",
                   "run.flower_cpus_per_client=2", "run.device=cpu")
    bc = ray_backend_config(cfg)
    assert bc["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.0}
    assert bc["init_args"]["num_cpus"] == 6 and bc["init_args"]["num_gpus"] == 0
    # four clients share one GPU: a quarter each, and Ray is given every GPU of the machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg.run.flower_gpus_per_client, cfg.run.device = 0.25, "cuda"
    bc = ray_backend_config(cfg)
    assert bc["client_resources"]["num_gpus"] == 0.25 and bc["init_args"]["num_gpus"] == 2
    cfg.run.flower_gpus_per_client = 0.0  # cuda asked for, but Ray would hide every GPU from the workers
    with pytest.raises(ConfigError, match="flower_gpus_per_client > 0"):
        ray_backend_config(cfg)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cfg.run.flower_gpus_per_client, cfg.run.device = 0.5, "auto"
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        ray_backend_config(cfg)
    with pytest.raises(ConfigError, match="flower_cpus_per_client must be > 0"):
        tiny_cfg("run.flower_cpus_per_client=0")
    with pytest.raises(ConfigError, match="flower_gpus_per_client"):
        tiny_cfg("run.flower_gpus_per_client=1.5")


def test_join_device_reaches_the_node_config_and_its_federation(tiny_cfg, tmp_path):
    from fedvl.schema import dump_config
    from fedvl.transport import flower
    from fedvl.deploy.join import join_command

    cmd = join_command("h:9092", 1, tmp_path / "s", None, 1234, device="cpu")
    node_config = cmd[cmd.index("--node-config") + 1]
    assert 'device="cpu"' in node_config and "partition-id=1" in node_config
    assert "device=" not in join_command("h:9092", 1, tmp_path / "s", None, 1234)[4]
    if NO_CUDA:
        with pytest.raises(ConfigError, match="--device=cuda:1: no CUDA device"):
            join_command("h:9092", 1, tmp_path / "s", None, 1234, device="cuda:1")
    # the node builds its partition on its own device, whatever the server's config says
    text = dump_config(tiny_cfg("run.runtime=flower-deploy", "run.device=cuda:3"))
    fed = flower._client_federation(text, 0, every_partition=False, device="cpu")
    assert fed.amp.device == torch.device("cpu") and next(fed.model.parameters()).device.type == "cpu"
    flower._FEDS.clear()


@pytest.mark.slow
def test_device_benchmark_runs_its_reduced_cpu_path(tmp_path):
    """benchmarks/device.py without a GPU (or with --cpu): tiny-model samples/s in fp32 and bf16 for
    FedAvg-adapter and FedDAT, a tiny FedMMKT round, JSON out, agreement skipped (its generative rows:
    test_device_generative.py)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "device.py"
    env = dict(os.environ, FEDVL_BENCH_OUT=str(tmp_path / "device.json"))
    r = subprocess.run([sys.executable, str(script), "--cpu", "--skip-generative", "--steps", "2", "--batch", "8"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "reduced CPU path" in r.stdout
    out = json.loads((tmp_path / "device.json").read_text())
    assert out["path"] == "cpu-reduced" and out["agreement"] == {"skipped": "no CUDA device"}
    assert "generative" not in out
    assert set(out["throughput"]) == {f"tiny/{a}/{p}" for a in ("fedavg-adapter", "feddat") for p in ("fp32", "bf16")}
    for m in out["throughput"].values():
        assert m["samples_per_s"] > 0 and m["steps"] == 2 and m["batch"] == 8 and m["loss"] > 0
    kt = out["fedmmkt_round"]
    assert kt["round_s"] > 0 and 0 <= kt["avg_acc"] <= 1 and {"generate_s", "clients_s", "eval_s"} <= set(kt["timing"])


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without the GPU the run was started on")
def test_a_run_started_on_a_gpu_resumes_on_the_cpu(tiny_cfg, tmp_path):
    """Checkpoints and client state are device-free: a FedDAT run whose config says cuda:0 continues
    here with `--resume DIR run.device=cpu`, and ends where an uninterrupted run ends."""
    import json
    import shutil
    import subprocess
    import sys

    run_dir = tmp_path / "results" / "moved"
    cfg = tiny_cfg("algorithm.name=feddat", "run.device=cpu", "run.name=moved")
    run_experiment(cfg, run_dir, progress_enabled=False)
    full = History.read(run_dir)
    # as if it had stopped after round 1 on a GPU machine
    shutil.rmtree(run_dir / "checkpoints" / "round-00002")
    (run_dir / "status.json").write_text(json.dumps({"state": "running"}))
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(text.replace("device: cpu", "device: cuda:0"))
    fedvl = lambda *a: subprocess.run([sys.executable, "-m", "fedvl", "run", "--quiet", "--resume", str(run_dir),  # noqa: E731
                                       *a], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    r = fedvl()
    assert r.returncode == 2 and "run.device=cuda:0: no CUDA device" in r.stderr
    r = fedvl("run.device=cpu")
    assert r.returncode == 0, r.stderr
    assert "resuming from round 1" in r.stderr
    resumed = History.read(run_dir)
    assert [x["round"] for x in resumed] == [1, 2]
    assert resumed[1]["train_loss"] == pytest.approx(full[1]["train_loss"], rel=1e-6)
    assert resumed[1]["avg"]["acc"] == pytest.approx(full[1]["avg"]["acc"], abs=1e-9)
    r = fedvl("algorithm.rounds=3")
    assert r.returncode == 2 and "--resume takes only the results folder" in r.stderr
