"""Hostile and careless input to a deployment (`fedvl serve` / `fedvl join`): a node decides that
a SuperLink is there by Flower's own answer, not by an open port; a TLS mismatch is named; a
server no node joins ends in one line; a node with a partition the run lacks is named by the
server; two runs of one name started at once leave exactly one running. Every server binds to
127.0.0.1 and every process a test starts is stopped by it."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY
from test_hostile import _processes_mentioning, fedvl, one_line

from fedvl.deploy.process import flower_env, free_port, stop

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
from test_deploy import _make_certs  # noqa: E402  (tests/deploy/test_deploy.py)


def _join(tmp_path: Path, port: int, *security: str, wait_s: str = "3"):
    return fedvl("join", "--server", f"127.0.0.1:{port}", "--partition", "0", *security, "--wait-s", wait_s,
                 "--state-dir", str(tmp_path / "node"), cwd=tmp_path)


class _Silent:
    """A listener that accepts connections and never says a word (any program on the port)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:  # closed by the test
                return

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


class _Http:
    """A plain HTTP server (it answers every request, but not as Flower's Fleet API)."""

    def __init__(self):
        class Quiet(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("listener", [_Silent, _Http], ids=["silent-socket", "http-server"])
def test_join_gives_up_on_a_listener_that_is_not_a_superlink(tmp_path, listener):
    server = listener()
    try:
        t0 = time.monotonic()
        r = _join(tmp_path, server.port, "--insecure")
        assert time.monotonic() - t0 < 30
    finally:
        server.close()
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fedvl join: error: cannot reach the SuperLink at 127.0.0.1:{server.port} after 3s "
                           f"(127.0.0.1:{server.port} accepts connections but does not answer as a Flower SuperLink")
    assert last.endswith("); giving up")
    assert "Traceback" not in r.stdout + r.stderr
    assert not _processes_mentioning(f"127.0.0.1:{server.port}")  # no SuperNode started or left behind


def test_join_with_a_root_certificate_that_is_not_one_is_refused_in_one_line(tmp_path):
    (tmp_path / "ca.pem").write_text("garbage\n")
    server = _Silent()
    try:
        r = _join(tmp_path, server.port, "--root-certificates", str(tmp_path / "ca.pem"), wait_s="60")
    finally:
        server.close()
    one_line(r, 2, f"--root-certificates {tmp_path / 'ca.pem'} is not a PEM CA certificate (")


@pytest.mark.parametrize("value", ["nan", "-1"])
def test_join_refuses_a_wait_that_is_not_a_finite_number_of_seconds(tmp_path, value):
    r = fedvl("join", "--server", "127.0.0.1:9", "--partition", "0", "--insecure", f"--wait-s={value}",
              "--state-dir", str(tmp_path / "node"), cwd=tmp_path)
    one_line(r, 2, "--wait-s must be a finite number of seconds >= 0")
    assert not (tmp_path / "node").exists()


def _none_left(text: str, wait_s: float = 30) -> bool:
    """No process mentions ``text`` within ``wait_s``: a SuperLink's SuperExec, in its own session, ends
    by itself once it sees its parent gone."""
    deadline = time.monotonic() + wait_s
    while _processes_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.5)
    return not _processes_mentioning(text)


def _superlink(tmp_path: Path, name: str, *security: str) -> tuple[subprocess.Popen, int]:
    from fedvl.deploy.process import _bin

    port = free_port()
    with open(tmp_path / f"{name}.log", "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen([_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(port), *security],
                                env=flower_env(tmp_path / f"{name}-home"), cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, port


def _until_answering(port: int, tls_ca: Path | None, proc: subprocess.Popen) -> None:
    from fedvl.deploy.join import _probe

    deadline = time.monotonic() + 60
    while _probe("127.0.0.1", port, tls_ca, 2) is not None:
        assert proc.poll() is None and time.monotonic() < deadline, "the SuperLink did not start"
        time.sleep(0.3)


@pytest.mark.slow
def test_a_tls_mismatch_either_way_is_named_in_one_line(tmp_path):
    ca, cert, key = _make_certs(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    wrong_ca = _make_certs(other)[0]
    links = []
    try:
        links.append(_superlink(tmp_path, "tls", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                                "--ssl-ca-certfile", str(ca)))
        links.append(_superlink(tmp_path, "plain", "--insecure"))
        (tls, tls_port), (plain, plain_port) = links
        _until_answering(tls_port, ca, tls)
        _until_answering(plain_port, None, plain)
        r = _join(tmp_path, tls_port, "--insecure", wait_s="60")
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"fedvl join: error: the SuperLink at 127.0.0.1:{tls_port} uses TLS, but this node was started with "
            "--insecure: join with --root-certificates CA.pem (the CA that signed the server's certificate)"]
        r = _join(tmp_path, plain_port, "--root-certificates", str(ca), wait_s="60")
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"fedvl join: error: the SuperLink at 127.0.0.1:{plain_port} does not use TLS (its server was started "
            "with --insecure), but this node was given --root-certificates: join with --insecure"]
        r = _join(tmp_path, tls_port, "--root-certificates", str(wrong_ca), wait_s="60")
        assert r.returncode == 1, r.stderr
        line = r.stderr.strip().splitlines()
        assert len(line) == 1 and line[0].startswith(
            f"fedvl join: error: the SuperLink at 127.0.0.1:{tls_port} uses TLS, but --root-certificates "
            f"{wrong_ca} does not verify its certificate (") and "CERTIFICATE_VERIFY_FAILED" in line[0]
    finally:
        for proc, _ in links:
            stop(proc, grace=5)
    for _, port in links:
        assert _none_left(f"127.0.0.1:{port}")


@pytest.mark.slow
def test_serve_that_no_node_joins_ends_in_one_line_without_a_traceback(tmp_path):
    port = free_port()
    r = fedvl("serve", *TINY, "run.name=alone", "run.flower_wait_s=3", "--host", "127.0.0.1", "--port", str(port),
              "--insecure", cwd=tmp_path)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr and "Exit Code" not in r.stdout + r.stderr
    errors = [x for x in r.stderr.splitlines() if "error" in x.lower()]
    assert len(errors) == 1 and errors[0] == r.stderr.strip().splitlines()[-1]
    assert errors[0].startswith("fedvl serve: error: the deployed run did not complete (status: failed: "
                                "FlowerRunError: no node joined within 3s (run.flower_wait_s): start one "
                                "`fedvl join --partition i` per client, i = 0..3)")
    status = json.loads((tmp_path / "results" / "alone" / "status.json").read_text())
    assert status["state"] == "failed" and "no node joined within 3s" in status["error"]
    assert _none_left(f":{port}")


FAKE_SUPERNODE = """
import sys, time
from pathlib import Path
print("fedvl.schema.ConfigError: this node holds partition 99, but the experiment has partitions 0..3", flush=True)
time.sleep(4)  # a loaded machine: the SuperNode hands the error reply on only after a while
Path(sys.argv[1]).write_text("delivered")
print("INFO :      Sent successfully", flush=True)
time.sleep(60)
"""


def test_a_node_with_a_bad_partition_stops_only_once_its_error_reply_is_sent(tmp_path, monkeypatch):
    """The server names a node that cannot serve its run by that node's error reply: the node must
    not stop before its SuperNode has sent it, however long that takes."""
    from fedvl.deploy import join as deploy

    (tmp_path / "node.py").write_text(FAKE_SUPERNODE)
    monkeypatch.setattr(deploy, "REPLY_PULL_S", 0.5)
    t0 = time.monotonic()
    _, why = deploy._run_node([sys.executable, str(tmp_path / "node.py"), str(tmp_path / "sent")], "127.0.0.1",
                                 free_port(), 60)
    assert why == "this node holds partition 99, but the experiment has partitions 0..3"
    assert (tmp_path / "sent").read_text() == "delivered"  # stopped after the reply went out, not before
    assert time.monotonic() - t0 < 20


def test_two_runs_of_one_name_at_once_exactly_one_claims_the_folder(tmp_path):
    """Lock-level race of two processes that both saw the folder missing: one claims it, the other
    refuses in one line; the winner's folder and lock file stay."""
    probe = """
import sys, time
from pathlib import Path
from fedvl.runfolder import RunFolder, RunFolderError, check_free, check_not_live
path, at = Path(sys.argv[1]), float(sys.argv[2])
while time.time() < at:
    pass
folder = RunFolder(path)
try:
    check_free(path, False)
    check_not_live(path)
    folder.acquire(fresh=True)
    (path / "config.yaml").write_text(sys.argv[3])
    time.sleep(0.5)
except RunFolderError as e:
    folder.release(abandon=True)
    print(e, file=sys.stderr)
    sys.exit(2)
folder.release()
"""
    (tmp_path / "probe.py").write_text(probe)
    for i in range(4):
        run = tmp_path / f"r{i}" / "same"
        at = time.time() + 1.5
        procs = [subprocess.Popen([sys.executable, str(tmp_path / "probe.py"), str(run), str(at), str(k)],
                                  stderr=subprocess.PIPE, text=True) for k in range(2)]
        errs = [p.communicate(timeout=60)[1] for p in procs]
        codes = [p.returncode for p in procs]
        assert sorted(codes) == [0, 2], errs
        loser = errs[codes.index(2)].strip().splitlines()
        assert len(loser) == 1 and ("in use by another fedvl process" in loser[0] or "already exists" in loser[0])
        assert (run / "config.yaml").read_text() == str(codes.index(0)) and (run / ".lock").is_file()


def test_a_momentary_look_at_a_folder_does_not_refuse_the_run_that_claims_it(tmp_path):
    """`check_not_live` (a second run starting at the same moment) holds a shared lock for an instant;
    a run claiming the folder in that instant is not refused as if another run held it, while a
    run that holds the folder still refuses every other."""
    import fcntl

    from fedvl.runfolder import LOCK_NAME, RunFolder, RunFolderError

    run = tmp_path / "same"
    run.mkdir()
    look = os.open(run / LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(look, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.3, os.close, (look,)).start()  # the look ends; closing drops its lock
    folder = RunFolder(run).acquire(fresh=True)
    try:
        with pytest.raises(RunFolderError, match=f"in use by another fedvl process \\(pid {os.getpid()}\\)"):
            RunFolder(run).acquire(fresh=True)
    finally:
        folder.release()


def test_the_server_names_a_node_whose_refusal_comes_after_the_join_deadline(monkeypatch):
    """A node that joins near the end of run.flower_wait_s and answers only after it (its worker warms
    up first) is still named, with its reason, in the server's one-line error."""
    from types import SimpleNamespace

    from fedvl.transport import flower

    class Query:
        def __init__(self, content, dst_node_id, message_type):
            self.metadata = SimpleNamespace(message_id=f"q{dst_node_id}", dst_node_id=dst_node_id)

    class Refusal:
        metadata = SimpleNamespace(reply_to_message_id="q5")
        error = SimpleNamespace(reason="ConfigError: this node holds partition 99, but the experiment has "
                                       "partitions 0..3")

        def has_error(self):
            return True

    class Grid:  # node 5 joins 0.5 s into a 1 s wait and answers 2 s after it is asked
        asked = None

        def get_node_ids(self):
            return [5] if time.monotonic() > t0 + 0.5 else []

        def push_messages(self, messages):
            self.asked = time.monotonic()
            return [m.metadata.message_id for m in messages]

        def pull_messages(self, ids):
            return [Refusal()] if time.monotonic() > self.asked + 2 else []

    monkeypatch.setattr(flower, "Message", Query)
    t0 = time.monotonic()
    with pytest.raises(flower.FlowerRunError) as e:
        flower.discover(Grid(), ["c0-photo"], 1.0)
    assert str(e.value) == ("after 1s no node holds client(s) c0-photo; start one `fedvl join --partition i` per "
                            "client; node 5 refused: ConfigError: this node holds partition 99, but the experiment "
                            "has partitions 0..3")
    with pytest.raises(flower.FlowerRunError, match=r"^no node joined within 0s \(run.flower_wait_s\)"):
        flower.discover(SimpleNamespace(get_node_ids=list), ["c0-photo"], 0.1)


def test_a_node_refused_first_after_wait_s_still_says_why(tmp_path, monkeypatch, capsys):
    """A SuperLink that answers late (a loaded server) and then refuses the node's key: the node's
    last line names the likely reason, not only that it gave up."""
    from fedvl.deploy import join as deploy

    key, ca = tmp_path / "node0", tmp_path / "ca.pem"
    key.write_text("a private key")
    ca.write_text("a CA")
    monkeypatch.setattr(deploy.signal, "signal", lambda *a: None)  # join's SIGTERM handler: not in pytest
    monkeypatch.setattr(deploy, "_unreachable", lambda *a: None)
    monkeypatch.setattr(deploy, "start_worker",
                        lambda folder, *port: subprocess.Popen(["sleep", "30"], start_new_session=True))

    def refused_after_the_deadline(*args):
        time.sleep(1.2)
        return 1, deploy.REFUSED

    monkeypatch.setattr(deploy, "_run_node", refused_after_the_deadline)
    assert deploy.join("127.0.0.1:9", 0, tmp_path / "state", ca, 1234, key, wait_s=1) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "fedvl join: error: the SuperLink at 127.0.0.1:9 still refuses this node after 1s (is its public key in "
        "the server's --auth-keys?); giving up"]
