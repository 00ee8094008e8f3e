"""fedvl's warm executor (fedvl.deploy.executor): it claims a SuperNode's ClientApp tasks itself.

The end-to-end test kills a node's executor (SIGKILL) while it trains: `fedvl join` starts it again,
the new one reports the lost message failed at once, the server retries the round
(run.round_retries) and the run ends with the in-process numbers. The unit tests cover what keeps a
long-lived process correct: a refused heartbeat does not stop it, another app is refused, a new
run never reuses an old run's model, and the packed tensor records."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from deploy_fixtures import assert_as_in_process, cmdlines  # tests/deploy_fixtures.py
from fedvl.report.history import History

FEDVL = str(Path(sys.executable).parent / "fedvl")


def _raw_cmdlines() -> list[bytes]:
    out = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(path.read_bytes())
        except OSError:  # ended meanwhile
            continue
    return out


def _executor_folders() -> dict[int, Path]:
    """pid -> private folder of every live fedvl executor."""
    found = {}
    for pid, cmd in cmdlines().items():
        parts = cmd.split()
        if "fedvl.deploy.executor" in parts:
            found[pid] = Path(parts[parts.index("fedvl.deploy.executor") + 1])
    return found


@pytest.mark.slow
def test_an_executor_killed_mid_training_is_restarted_and_the_run_ends_as_an_uninterrupted_one(tiny_overrides,
                                                                                                 tmp_path):
    from fedvl.deploy.names import INFLIGHT
    from fedvl.deploy.node_worker import KEY
    from fedvl.deploy.process import free_port, stop

    # enough local work that a train message lasts long enough to be caught running
    # min_clients=2: a round with a failed client is retried, not aggregated without it
    args = tiny_overrides + ["data.num_clients=2", "data.domains=photo,sketch", "data.train_images=96",
                             "algorithm.local_epochs=4", "algorithm.rounds=3", "run.round_retries=1",
                             "run.min_clients=2", "run.round_timeout_s=600"]
    port, run = free_port(), tmp_path / "results" / "dep"
    logs = [open(tmp_path / f"node{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen([FEDVL, "join", "--server", f"127.0.0.1:{port}", "--partition", str(i), "--insecure",
                               "--state-dir", str(tmp_path / f"node{i}"), "--wait-s", "60"], cwd=tmp_path,
                              stdout=logs[i], stderr=subprocess.STDOUT, start_new_session=True) for i in range(2)]
    killed, seen_clientapp = [], []
    try:
        serve = subprocess.Popen([FEDVL, "serve", *args, "run.name=dep", "--host", "127.0.0.1", "--port", str(port),
                                  "--insecure"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, start_new_session=True)
        procs.append(serve)
        out: list[str] = []
        threading.Thread(target=lambda: out.append(serve.stdout.read()), daemon=True).start()
        deadline = time.monotonic() + 600
        executors: dict[int, Path] = {}
        while len(executors) < 2:
            assert serve.poll() is None and time.monotonic() < deadline, "the nodes' executors did not start"
            executors = _executor_folders()
            time.sleep(0.05)
        secrets = [(folder / KEY).read_bytes() for folder in executors.values()]  # the SuperExec secrets
        while not killed:  # round 1 is over; kill whichever executor then holds a train message
            assert serve.poll() is None and time.monotonic() < deadline, "the run ended before a kill"
            if not (run / "metrics.jsonl").exists():
                time.sleep(0.01)
                continue
            # (the server's flwr-serverapp carries its token on its command line: Flower's, not the node's)
            seen_clientapp += [c for c in cmdlines().values()
                               if "flwr-clientapp" in c or "--token" in c and "flwr-serverapp" not in c]
            for pid, folder in executors.items():
                try:
                    if b"train" in (folder / INFLIGHT).read_bytes():
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        break
                except OSError:  # not holding a message right now
                    continue
            time.sleep(0.002)
        serve.wait(timeout=600)
        assert serve.returncode == 0, "".join(out)[-3000:]
        cmds = _raw_cmdlines()
    finally:
        for p in procs:
            stop(p, grace=5)
        for f in logs:
            f.close()
    node_logs = "".join((tmp_path / f"node{i}.log").read_text() for i in range(2))
    assert "starting it again (1 of 3)" in node_logs
    assert "reported the message it was running when it died as failed" in node_logs
    # no per-message process, and neither the secret nor a task token on any command line
    assert not seen_clientapp
    assert secrets and not any(s in c or s.hex().encode() in c for s in set(secrets) for c in cmds)
    hist = History.read(run)
    assert [r["round"] for r in hist] == [1, 2, 3]
    assert_as_in_process(args, hist, tmp_path)


def _fab(clientapp: str) -> SimpleNamespace:
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pyproject.toml", f'[project]\nname = "x"\nversion = "1.0.0"\n[tool.flwr.app]\npublisher = "p"\n'
                                     f'[tool.flwr.app.components]\nserverapp = "a:b"\nclientapp = "{clientapp}"\n')
    return SimpleNamespace(content=buf.getvalue())


def test_the_executor_runs_fedvls_client_app_only():
    from fedvl.deploy.executor import CLIENT_APP_REF, _check_app

    _check_app(_fab(CLIENT_APP_REF))
    with pytest.raises(RuntimeError, match="runs fedvl's ClientApp only.*'evil.app:client_app'"):
        _check_app(_fab("evil.app:client_app"))


def test_a_refused_heartbeat_is_recorded_not_signalled(monkeypatch):
    """Flower's own heartbeat raises SIGINT in its process when refused; the executor's only marks the
    task revoked and ends its thread (the process serves the next task)."""
    from fedvl.deploy import executor

    monkeypatch.setattr(executor, "HEARTBEAT_S", 0.01)
    answers = iter([True, False])
    client = SimpleNamespace(SendTaskHeartbeat=lambda req: SimpleNamespace(success=next(answers)))
    raised = []
    monkeypatch.setattr(signal, "raise_signal", raised.append)
    monkeypatch.setattr(os, "kill", lambda *a: raised.append(a))
    beat = executor.Heartbeat(client)
    beat.start()
    beat.join(timeout=5)
    assert not beat.is_alive() and beat.revoked and not raised


def test_a_new_run_builds_its_own_federation(tiny_cfg, monkeypatch):
    """A long-lived node process keys what it built by run: the same config in a new run builds anew
    (nothing one run trained in memory reaches the next); the same run reuses it."""
    from fedvl.schema import dump_config
    from fedvl.transport import flower

    built = []

    class Family:
        def check(self, cfg):
            pass

        def build_node(self, cfg, pids):
            built.append(cfg)
            return SimpleNamespace(client_ids=["c0", "c1"], close=lambda: None)

    monkeypatch.setattr(flower, "family_of", lambda name: Family())
    monkeypatch.setattr(flower, "_FEDS", {})
    text = dump_config(tiny_cfg())
    a = flower._client_federation(text, 0, False, run="r1")
    assert flower._client_federation(text, 0, False, run="r1") is a
    b = flower._client_federation(text, 0, False, run="r2")
    assert b is not a and len(built) == 2


def test_packed_records_round_trip_every_dtype_and_refuse_malformed_ones():
    from flwr.app import Array, ArrayRecord

    from fedvl.transport.wire import DATA, INDEX, from_record, to_record

    params = {"w": torch.randn(3, 4), "b16": torch.randn(5).to(torch.bfloat16), "n": torch.tensor(7),
              "empty": torch.zeros(0, 2), "i": torch.arange(6).reshape(2, 3), "h": torch.randn(2).half()}
    record = to_record(params)
    assert sorted(record.keys()) == [DATA, INDEX]  # two Arrays, however many tensors
    back = from_record(record)
    assert list(back) == list(params)
    for k, t in params.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t), k

    def with_index(index, data=record[DATA]):
        import numpy as np

        head = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
        return ArrayRecord({INDEX: Array.from_numpy_ndarray(head), DATA: data})

    with pytest.raises(ValueError, match="runs past"):
        from_record(with_index([["w", "float32", [300]]]))
    with pytest.raises(ValueError, match="left over"):
        from_record(with_index([["w", "float32", [3, 4]]]))
    with pytest.raises(ValueError, match="unknown dtype|malformed"):
        from_record(with_index([["w", "nn", [3]]]))
    with pytest.raises(ValueError, match="not a fedvl tensor record"):
        from_record(ArrayRecord.from_torch_state_dict({"w": torch.ones(2)}))


def test_the_executors_retry_hands_a_refusal_back_and_retries_a_lost_connection(monkeypatch):
    """Flower's own retry stops its process with SIGINT on a 401; the executor's gives the error to the
    task (which is dropped) and retries only a connection the restarting SuperNode lost."""
    import httpx

    from fedvl.deploy.executor import _retry

    signalled = []
    monkeypatch.setattr(os, "kill", lambda *a: signalled.append(a))
    monkeypatch.setattr(signal, "raise_signal", signalled.append)
    request = httpx.Request("POST", "http://127.0.0.1:1/flwr.proto.Runtime/PullTaskInput")

    def refused():
        raise httpx.HTTPStatusError("401", request=request, response=httpx.Response(401, request=request))

    with pytest.raises(httpx.HTTPStatusError):
        _retry().invoke(refused)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return "answered"

    retry = _retry()
    retry.wait_function = lambda s: None
    assert retry.invoke(flaky) == "answered" and len(calls) == 3
    assert not signalled
