"""A deployed node's warm worker (fedvl.deploy.node_worker), the thin ClientApp that hands it
every message (fedvl.deploy.node_app), the SuperNode's capped polling (fedvl.deploy.supernode)
and the server's reply polling (fedvl.transport.flower.exchange)."""

import inspect
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedvl.schema import ConfigError, dump_config
from fedvl.transport import flower
from fedvl.deploy.process import flower_env, stop
from fedvl.transport.flower import CONFIG_KEY, STATE_KEY, ConfigRecord, Context, Message, RecordDict
from fedvl.deploy.node_worker import KEY, WORKER_KEY, NodeWorkerError, ask, make_folder


def _context(cfg_text: str, partition: int, tmp_path, folder=None) -> Context:
    node_config = {"partition-id": partition, STATE_KEY: str(tmp_path / "state")}
    if folder is not None:
        node_config[WORKER_KEY] = str(folder)
    return Context(run_id=7, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config={CONFIG_KEY: cfg_text})


def _message(kind: str = "query", content: RecordDict | None = None, mid: str = "q1", reply_to: str = "") -> Message:
    """A message as a node receives it (outside a running app Flower cannot make one from scratch)."""
    from flwr.app import Metadata

    meta = Metadata(run_id=7, message_id=mid, src_node_id=0, dst_node_id=1, reply_to_message_id=reply_to,
                    group_id="", created_at=time.time(), ttl=3600, message_type=kind)
    return Message(content if content is not None else RecordDict({"config": ConfigRecord({"cid": "?"})}),
                   metadata=meta)


def _query() -> Message:
    return _message()


@pytest.fixture
def worker(tmp_path):
    folder = make_folder()
    proc = subprocess.Popen([sys.executable, "-m", "fedvl.deploy.node_worker", str(folder)], env=flower_env(),
                            start_new_session=True, stderr=subprocess.PIPE, text=True)
    yield folder, proc
    stop(proc, grace=3)
    proc.kill()  # whatever stop() left (it never should)
    proc.wait(timeout=60)


def test_the_worker_answers_as_fedvls_client_app_and_keeps_errors_by_name(worker, tiny_cfg, tmp_path):
    folder, proc = worker
    assert oct((folder / KEY).stat().st_mode & 0o777) == "0o600" and oct(folder.stat().st_mode & 0o777) == "0o700"
    text = dump_config(tiny_cfg("data.num_clients=2", "data.domains=photo,sketch", "run.runtime=flower-deploy"))
    ctx = _context(text, 1, tmp_path, folder)
    reply = ask(folder, _query(), ctx, wait_s=120)
    assert reply.content["config"]["cid"] == "c1-sketch"  # what the in-process ClientApp answers
    local = flower.make_client_app()(message=_query(), context=_context(text, 1, tmp_path))
    assert dict(reply.content["config"]) == dict(local.content["config"])
    assert ask(folder, _query(), ctx).content["config"]["cid"] == "c1-sketch"  # a second message, same worker
    # a partition the run lacks: the same ConfigError (by name: `fedvl join` watches for it)
    with pytest.raises(ConfigError, match="this node holds partition 5"):
        ask(folder, _query(), _context(text, 5, tmp_path, folder))
    assert proc.poll() is None  # an error in one message does not end the worker


def test_the_worker_refuses_a_caller_without_its_key(worker, tiny_cfg, tmp_path):
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    folder, proc = worker
    deadline = time.monotonic() + 120
    while not (folder / "worker.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises((AuthenticationError, EOFError, OSError)):
        Client(str(folder / "worker.sock"), family="AF_UNIX", authkey=b"not the key").send_bytes(b"x")
    # still serving after the refusal: a caller with the key is answered
    text = dump_config(tiny_cfg("data.num_clients=2", "data.domains=photo,sketch", "run.runtime=flower-deploy"))
    assert ask(folder, _query(), _context(text, 0, tmp_path, folder)).content["config"]["cid"] == "c0-photo"
    assert proc.poll() is None


def test_no_worker_answers_in_one_line(tmp_path):
    folder = make_folder()
    with pytest.raises(NodeWorkerError, match="does not answer after 0s"):
        ask(folder, _query(), _context("{}", 0, tmp_path, folder), wait_s=0.0)


def test_the_thin_client_app_imports_no_torch():
    code = ("import sys, fedvl.deploy.node_app; "
            "print(sorted(m for m in ('torch', 'transformers', 'fedvl.transport.flower') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=flower_env(), check=True)
    assert out.stdout.strip() == "[]"


def test_the_supernode_loop_sleeps_where_the_cap_expects(monkeypatch):
    """fedvl.deploy.supernode caps the sleeps of Flower's SuperNode loop: they must still be the
    module-level ``time.sleep`` calls it replaces (a Flower upgrade that moves them fails here)."""
    import flwr.supernode.start_client_internal as loop

    from fedvl.deploy.supernode import CappedSleep

    source = inspect.getsource(loop)
    assert loop.time is time or isinstance(loop.time, CappedSleep)
    assert "time.sleep(3)" in source and source.count("time.sleep(0.5)") == 2
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    capped = CappedSleep(0.05, local_cap=0.02)
    capped.sleep(3)  # the wait for the next message: a request to the SuperLink
    capped.sleep(0.5)  # a wait for the local reply
    capped.sleep(0.01)
    assert slept == [0.05, 0.02, 0.01]  # capped, each at its own cap; a shorter wait is left as it is
    assert capped.monotonic is time.monotonic and capped.time is time.time  # everything else is the time module's


def test_a_node_that_just_handled_a_message_looks_for_the_next_one_sooner(monkeypatch):
    from fedvl.deploy.supernode import BUSY_DIVISOR, BUSY_S, CappedSleep

    now = [100.0]
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    capped = CappedSleep(0.2, local_cap=0.02, clock=lambda: now[0])
    capped.sleep(3)  # idle: every cap
    capped.sleep(0.5)  # a message is being answered (a local wait)
    now[0] += BUSY_S / 2
    capped.sleep(3)  # soon after: the round's next message is near
    now[0] += BUSY_S
    capped.sleep(3)  # idle again
    assert slept == [0.2, 0.02, 0.2 / BUSY_DIVISOR, 0.2]


def test_the_supernode_entry_point_caps_the_loop_at_the_poll_option(monkeypatch):
    """``python -m fedvl.deploy.supernode`` puts the cap from FEDVL_NODE_POLL_S (default 0.2 s) on the
    SuperNode loop's sleeps, then runs Flower's own SuperNode as ``flower-supernode``."""
    import flwr.supernode.cli
    import flwr.supernode.start_client_internal as loop

    from fedvl.deploy import flower_pins, supernode

    monkeypatch.setattr(flower_pins, "cut_pull_backoff", lambda: None)  # (a process-wide change)
    ran = []
    monkeypatch.setattr(flwr.supernode.cli, "flower_supernode", lambda: ran.append((sys.argv[0], loop.time.cap)))
    monkeypatch.setattr(loop, "time", time)
    monkeypatch.setattr(sys, "argv", ["supernode.py", "--insecure"])
    monkeypatch.delenv(supernode.POLL_ENV, raising=False)
    supernode.main()
    monkeypatch.setenv(supernode.POLL_ENV, "0.07")
    supernode.main()
    assert ran == [("flower-supernode", supernode.DEFAULT_POLL_S), ("flower-supernode", 0.07)]
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    loop.time.sleep(3)  # the loop's wait for the next message
    assert slept == [0.07]


class _Grid:
    """Replies arrive after ``delay`` pulls; push fills in message ids as Flower's grids do."""

    def __init__(self, delay: int):
        self.delay, self.pulls = delay, 0

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        if self.pulls < self.delay:
            return []
        return [_message(mid=f"r{i}", reply_to=i) for i in sorted(ids)]


def test_exchange_polls_quickly_and_stops_at_the_timeout(monkeypatch):
    grid, pauses = _Grid(delay=8), []
    with monkeypatch.context() as m:
        m.setattr(flower.time, "sleep", pauses.append)
        replies = flower.exchange(grid, [_query(), _query()], timeout=None)
    assert len(replies) == 2 and grid.pulls == 8
    # quick polls backing off to 50 ms, not 3 s each
    assert pauses == pytest.approx([0.02, 0.03, 0.045, 0.05, 0.05, 0.05, 0.05])
    grid = _Grid(delay=10**6)
    t0 = time.perf_counter()
    assert flower.exchange(grid, [_query()], timeout=0.3) == []
    assert 0.3 <= time.perf_counter() - t0 < 1.0


def test_bad_poll_and_resume_options_stop_in_one_line(tiny_cfg, tmp_path):
    fedvl = str(Path(sys.executable).parent / "fedvl")
    out = subprocess.run([fedvl, "join", "--server", "127.0.0.1:9", "--partition", "0", "--insecure", "--poll-s", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--poll-s must be between 0.01 and 60" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    # a results folder of a run that was not deployed has no run token: nothing starts
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(tiny_cfg("run.runtime=flower-deploy")))
    (run / "status.json").write_text('{"state": "interrupted"}')
    out = subprocess.run([fedvl, "serve", "--resume", str(run), "--insecure", "--port", "9"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "holds no deployed run to resume" in out.stderr
    out = subprocess.run([fedvl, "serve", "--resume", str(run), "--insecure", "algorithm.rounds=3"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "takes only the results folder" in out.stderr


def test_a_nodes_rounded_store_trains_from_the_state_before_the_round(tmp_path):
    """What `fedvl serve --resume` relies on: round r's train message reads the newest state before r
    (not one a lost round r already wrote), evaluation reads round r's, and 3 rounds are kept."""
    import torch

    from fedvl.rounds.state import RoundedStateStore

    store = RoundedStateStore(tmp_path)
    for rnd in (1, 2, 3, 4):
        store.at(rnd, fit=True).save("c0", {"w": torch.full((2,), float(rnd))})
    assert [r for r, _ in store.rounds("c0")] == [4, 3, 2]
    assert store.at(4, fit=True).load("c0")["w"][0] == 3.0  # round 4 again, after a server restart
    assert store.at(3, fit=False).load("c0")["w"][0] == 3.0
    assert store.at(2, fit=True).load("c0") is None  # round 1's state was dropped
    assert store.at(9, fit=True).load("other") is None
    # an evaluation that brings weights (kt-fedavg's average) replaces that round's state, no other
    store.at(4, fit=False).save("c0", {"w": torch.zeros(2)})
    assert [r for r, _ in store.rounds("c0")] == [4, 3, 2]
    assert store.at(5, fit=True).load("c0")["w"][0] == 0.0 and store.at(4, fit=True).load("c0")["w"][0] == 3.0


class _JoiningGrid:
    """Nodes connect over time: the n-th look at the node ids sees the n-th list."""

    def __init__(self, seen: list[list[int]]):
        self.seen, self.looks, self.pushed = seen, 0, []

    def get_node_ids(self):
        ids = self.seen[min(self.looks, len(self.seen) - 1)]
        self.looks += 1
        return ids

    def push_messages(self, messages):
        self.pushed += [(m.metadata.dst_node_id, m.metadata.message_type, dict(m.content["config"]))
                        for m in messages]
        return [f"w{i}" for i in range(len(messages))]


def test_the_warm_up_asks_each_node_once_as_it_connects_and_stops_before_the_rounds(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):  # a message reads them (a ServerApp's)
        monkeypatch.setattr(TaskIdentity, name, value)
    grid = _JoiningGrid([[], [7], [7], [7, 9]])
    warm = flower.WarmUp(grid, poll_s=0.001)
    warm.start()
    deadline = time.monotonic() + 10
    while grid.looks < 6 and time.monotonic() < deadline:
        time.sleep(0.001)
    warm.stop()
    assert not warm.is_alive()
    assert grid.pushed == [(7, "query", {flower.WARM_UP: 1}), (9, "query", {flower.WARM_UP: 1})]
    looks = grid.looks
    time.sleep(0.01)
    assert grid.looks == looks  # stopped: the grid is the rounds' now
