"""run.client_procs: one client trained data parallel on 2 processes (gloo on the CPU) gives the numbers
of one process at the same batch size; its workers never outlive a run, a failure or an interrupt."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import psutil
import pytest
import torch

from fedvl.engine.shard import Shard, loss_terms
from fedvl.experiment import run_experiment
from fedvl.finetune import procs as procs_module
from fedvl.finetune.exchange import client_fit
from fedvl.models.params import get_params
from fedvl.rounds.state import ClientStateStore
from fedvl.schema import ConfigError
from fedvl.transport.inprocess import build_federation

# 36 training rows in batches of 5: the last batch has 1 row, so one rank's slice of it is empty
FIT = ["algorithm.local_epochs=2", "algorithm.batch_size=5"]


def _comparable(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Everything but the key thirds of attention in-projection biases: softmax ignores a key bias, so
    its gradient is zero up to rounding, and Adam (g / sqrt(v)) turns that rounding into full-size
    steps whose sign differs between any two summation orders; the model's outputs do not depend on it."""
    out = {}
    for k, v in params.items():
        if k.endswith("in_proj_bias"):
            e = v.numel() // 3
            v = torch.cat([v[:e], v[2 * e:]])
        out[k] = v
    return out


def _fit_both(cfg, tmp_path):
    """One client's round-1 fit in one process and on 2 processes, from the same start."""
    fed = build_federation(cfg, status=lambda s: None)
    cid = fed.client_ids[0]
    start = get_params(fed.model, fed.trainable)
    down = get_params(fed.model, fed.travel)
    out = []
    try:
        for procs in (1, 2):
            fed.cfg.run.client_procs = procs
            fed.model.load_state_dict(start, strict=False)
            losses: list[float] = []
            res = client_fit(fed, ClientStateStore(tmp_path / f"states{procs}"), cid, 1, down,
                             on_step=lambda done, total, loss: losses.append(loss))
            out.append((res, get_params(fed.model, fed.trainable), losses))
        workers = [p.pid for p in fed.procs.procs]
    finally:
        fed.close()
    assert not any(psutil.pid_exists(pid) for pid in workers)
    return out


@pytest.mark.parametrize("algo, extra", [
    ("fedavg", []),
    ("fedprox", ["algorithm.prox_mu=0.5"]),  # a regulariser on every rank
    ("feddat", []),  # two backward passes and optimiser steps per batch
    ("fedavg", ["model.peft=lora", "model.lora_rank=4", "model.client_lora_ranks=2,4,4,4"]),  # rank 2 of 4
])
def test_two_processes_train_as_one(tiny_cfg, tmp_path, algo, extra):
    (one, p1, l1), (two, p2, l2) = _fit_both(tiny_cfg(f"algorithm.name={algo}", *FIT, *extra), tmp_path)
    assert one.num_examples == two.num_examples == 36
    assert one.metrics["steps"] == two.metrics["steps"] == 16
    # the loss is the whole batch's, step by step (the progress display sees rank 0's reduced one)
    assert l2 == pytest.approx(l1, rel=1e-5, abs=1e-6) and len(l1) == 16
    for k, v in one.metrics.items():  # FedDAT's distillation diagnostics too: batch means over both slices
        if k != "compute_s":
            assert two.metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert list(two.metrics) == list(one.metrics)
    # Adam divides by sqrt(v), so a component with a near-zero gradient (parts of the attention key
    # projection) carries its rounding into the step: 1e-5 is 0.2% of one step (lr = 0.005)
    a, b = _comparable(p1), _comparable(p2)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=k)
    for k in one.params:  # what travels is what the parent's model holds after the fit
        torch.testing.assert_close(two.params[k], p2[k], rtol=0, atol=0)


def test_a_run_on_two_processes_matches_one_and_leaves_no_process(tiny_cfg, tmp_path, monkeypatch):
    started = []
    real = procs_module.ClientProcs.__init__

    def record(self, fed):
        real(self, fed)
        started.extend(p.pid for p in self.procs)

    monkeypatch.setattr(procs_module.ClientProcs, "__init__", record)
    finals = {}
    for procs in (1, 2):
        cfg = tiny_cfg(f"run.client_procs={procs}", f"run.name=p{procs}", "algorithm.name=fedprox",
                       "data.num_clients=2")
        finals[procs] = run_experiment(cfg, tmp_path / f"p{procs}", progress_enabled=False)
    assert len(started) == 2  # one pool for the whole run: both clients, both rounds
    assert not multiprocessing.active_children()
    assert not any(psutil.pid_exists(pid) for pid in started)
    # what stays is multiprocessing's own idle helpers (they end with this process): no worker
    helpers = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")
    left = [p for p in psutil.Process().children(recursive=True)
            if not any(h in " ".join(p.cmdline()) for h in helpers)]
    assert not left, [p.cmdline() for p in left]
    rounds = [[json.loads(x) for x in (tmp_path / f"p{p}" / "metrics.jsonl").read_text().splitlines()]
              for p in (1, 2)]
    assert [r["round"] for r in rounds[1]] == [1, 2]
    for a, b in zip(*rounds):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        for cid in a["eval"]:
            for k, v in a["eval"][cid].items():
                assert b["eval"][cid][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (a["round"], cid, k)
    assert finals[2]["final"]["avg"]["acc"] == pytest.approx(finals[1]["final"]["avg"]["acc"], abs=1e-6)


def test_a_dead_worker_or_an_interrupt_stops_the_pool(tiny_cfg, tmp_path):
    fed = build_federation(tiny_cfg("run.client_procs=2", *FIT), status=lambda s: None)
    cid, down = fed.client_ids[0], get_params(fed.model, fed.travel)
    try:
        client_fit(fed, ClientStateStore(tmp_path / "s"), cid, 1, down)
        first = [p.pid for p in fed.procs.procs]
        os.kill(first[1], signal.SIGKILL)
        with pytest.raises(RuntimeError, match="worker rank 1 stopped"):
            client_fit(fed, ClientStateStore(tmp_path / "s"), cid, 2, down)
        assert not any(psutil.pid_exists(pid) for pid in first)  # rank 0 too: it would wait in a collective

        def interrupt(done, total, loss):  # Ctrl-C in the parent while the workers train
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):  # the next fit starts a new pool
            client_fit(fed, ClientStateStore(tmp_path / "s"), cid, 2, down, on_step=interrupt)
        second = [p.pid for p in fed.procs.procs]
        assert not set(first) & set(second)
        assert not any(psutil.pid_exists(pid) for pid in second)
    finally:
        fed.close()
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("args, message", [
    (["run.client_procs=0"], "run.client_procs must be in 1..64, got 0"),
    (["run.client_procs=65"], "run.client_procs must be in 1..64, got 65"),
    (["run.client_procs=2", "algorithm.name=fedmmkt"], "algorithm.name=fedmmkt (knowledge transfer)"),
    (["run.client_procs=2", "run.runtime=flower-sim", "run.flower_backend=ray"], "run.flower_backend=ray"),
    (["run.client_procs=2", "run.device=cuda"], "no CUDA device" if not torch.cuda.is_available() else
     "one GPU per process" if torch.cuda.device_count() < 2 else None),
])
def test_refused_in_one_line(tiny_cfg, args, message):
    if message is None:
        pytest.skip("this machine has the GPUs")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        tiny_cfg(*args)
    assert "\n" not in str(e.value)


def test_a_deployment_leaves_the_devices_to_its_nodes(tiny_cfg):
    assert tiny_cfg("run.client_procs=2", "run.runtime=flower-deploy").run.client_procs == 2


def test_slices_and_loss_terms_by_hand():
    idx = torch.tensor([7, 3, 5, 1, 0])
    assert [Shard(r, 2).rows(idx).tolist() for r in (0, 1)] == [[7, 3, 5], [1, 0]]
    assert [Shard(r, 2).rows(idx[:1]).tolist() for r in (0, 1)] == [[7], []]  # rank 1 borrows a row, weight 0
    assert loss_terms({"labels": torch.tensor([1, 2, 3])}) == 3
    # a generative batch: its answer tokens (the first position predicts nothing)
    mask = torch.tensor([[False, False, True, True], [False, True, False, False]])
    assert loss_terms({"labels": torch.tensor([4, 5, 6]), "target_mask": mask}) == 3


def test_a_node_may_train_each_client_on_gpus_in_a_row():
    from fedvl.deploy.join import join_command
    from fedvl.engine.device import DeviceError, device_list
    from fedvl.transport.flower import node_device

    assert device_list("cuda:1") == ("cuda:1", 1)
    assert device_list("cuda:0,1") == device_list("cuda:0,cuda:1") == ("cuda:0", 2)
    assert device_list("cuda:2, 3,4") == ("cuda:2", 3)
    for bad in ("cuda:0,2", "cpu,cpu", "cuda:1,0"):
        with pytest.raises(DeviceError, match="GPUs"):
            device_list(bad)
    assert node_device("cuda:0,1") == ("cuda:0", 2)  # a node's run.device and run.client_procs
    with pytest.raises(ConfigError, match=r"^--device: a list of devices names GPUs in a row"):
        node_device("cuda:0,3")
    if torch.cuda.device_count() < 2:  # refused before the node starts, in one line
        with pytest.raises(ConfigError, match="--device") as e:
            join_command("127.0.0.1:9092", 0, Path("/tmp/state"), None, 9094, device="cuda:0,1")
        assert "\n" not in str(e.value)
