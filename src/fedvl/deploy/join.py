"""``fedvl join`` on a real Flower deployment: a SuperNode for one partition, beside the node's warm
process, which keeps the model and the partition's data in memory between messages. By default
that process is fedvl's executor (:mod:`fedvl.deploy.executor`), which claims the SuperNode's
ClientApp tasks itself (``--isolation process``); ``--executor flower`` keeps Flower's own
per-message ``flwr-clientapp`` processes, each handing its message to the warm worker
(:mod:`fedvl.deploy.node_worker`).

This process only starts, watches (restarting the warm process when it dies) and stops those two
and probes the SuperLink; it imports neither torch nor Flower.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from fedvl.deploy.names import DEVICE_KEY, EXECUTORS, EXIT_FATAL, FATAL, STATE_KEY
from fedvl.deploy.node_worker import KEY, WORKER_KEY, make_folder

MAX_RESTARTS = 3  # a warm process that keeps dying has a cause a restart does not fix
from fedvl.deploy.process import die_with_parent, flower_env, free_port, stop
from fedvl.deploy.supernode import DEFAULT_POLL_S, POLL_ENV
from fedvl.schema import ConfigError


def join_command(server: str, partition: int, state_dir: Path, tls_ca: Path | None, port: int,
                 auth_key: Path | None = None, device: str = "", worker: Path | None = None,
                 secret: Path | None = None) -> list[str]:
    """The ``flower-supernode`` command of one client node; ``auth_key``: the node's private key
    (OpenSSH format) when the SuperLink authenticates nodes; ``worker``: the folder of the node's
    warm worker (:mod:`fedvl.deploy.node_worker`), which then answers every message; ``secret``: the
    SuperExec secret file of fedvl's executor, which then claims the node's tasks
    (``--isolation process``: the SuperNode launches no ClientApp process)."""
    if partition < 0:
        raise ConfigError(f"--partition must be >= 0, got {partition}")
    if tls_ca is not None and not Path(tls_ca).is_file():
        raise ConfigError(f"root certificate not found: {tls_ca}")
    if auth_key is not None and not Path(auth_key).is_file():
        raise ConfigError(f"node private key not found: {auth_key}")
    if auth_key is not None and tls_ca is None:
        raise ConfigError("--auth-key needs TLS (--root-certificates): Flower authenticates nodes only over TLS")
    node_config = f"partition-id={partition} {STATE_KEY}={json.dumps(str(Path(state_dir).resolve()))}"
    if device:  # checked here, before the node starts: this machine must have it
        from fedvl.engine.device import DeviceError, device_list, rank_devices, resolve_device

        try:  # a list of GPUs (cuda:0,1): each client trains on all of them (run.client_procs)
            first, procs = device_list(device)
            rank_devices(resolve_device(first), procs)
        except DeviceError as e:
            raise ConfigError(str(e).replace("run.device", "--device")) from None
        node_config += f" {DEVICE_KEY}={json.dumps(device)}"
    if worker is not None:
        node_config += f" {WORKER_KEY}={json.dumps(str(worker))}"
    # Flower's SuperNode, polling faster (fedvl.deploy.supernode)
    cmd = [sys.executable, "-m", "fedvl.deploy.supernode", "--superlink", server, "--node-config", node_config,
           "--port", str(port), "--host", "127.0.0.1"]
    if secret is not None:
        cmd += ["--isolation", "process", "--superexec-auth-secret-file", str(secret)]
    cmd += ["--auth-supernode-private-key", str(Path(auth_key).resolve())] if auth_key else []
    return cmd + (["--root-certificates", str(tls_ca)] if tls_ca else ["--insecure"])


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# What a SuperNode logs when the SuperLink is unreachable or refuses it. It then exits 1, but its
# SuperExec child lingers, retrying, so the whole process group is stopped on this line.
SUPERNODE_CONNECTION_ERROR = "Exit Code: 305"
# What the fedvl ClientApp raises for a partition the run does not have (flower._client_federation):
# the node can never serve this run, so it stops instead of answering every message with a traceback.
BAD_PARTITION = "ConfigError: this node holds partition"
# What a SuperNode logs once it has handed a reply to its SuperLink (or failed to): after a bad
# partition the node stops only then, so the server always gets the error reply that names this node.
REPLY_HANDED_ON = ("Sent successfully", "Failed to send message", "is not in `RUNNING` status")
REPLY_WAIT_S = 30.0  # a SuperNode that never says so is stopped after this long
# Once a node has left, Flower's SuperLink answers the server's pull of a reply from it with "node
# unavailable", not the reply it holds: the node stays this long after sending, while the server pulls
# it (it looks every 50 ms or so; the margin is for a server slowed by a loaded machine).
REPLY_PULL_S = 10.0
PROBE_EVERY_S = 0.1  # how often a node looks for a SuperLink that is not there yet


REFUSED, ENDED, WORKER_GONE = "refused", "ended", "worker gone"


class Worker:
    """The node's warm process: fedvl's executor (``runtime_port`` given: it claims the tasks of the
    SuperNode whose local API listens there) or the worker Flower's per-message ClientApp asks.
    One that dies is started again (the executor's successor reports the lost task failed), up to
    ``MAX_RESTARTS`` times; one that stops because the run cannot use this node is not."""

    ALIVE, RESTARTED, FATAL, GONE = "alive", "restarted", "fatal", "gone"

    def __init__(self, folder: Path, runtime_port: int | None = None):
        self.folder, self.runtime_port, self.restarts = folder, runtime_port, 0
        self.proc = start_worker(folder, runtime_port)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def fatal(self) -> str | None:
        path = self.folder / FATAL
        return path.read_text() if path.exists() else None

    def check(self) -> str:
        if self.proc.poll() is None:
            return self.ALIVE
        if self.returncode == EXIT_FATAL and self.fatal():
            return self.FATAL
        if self.restarts >= MAX_RESTARTS:
            return self.GONE
        self.restarts += 1
        print(f"fedvl join: this node's fedvl {'executor' if self.runtime_port else 'worker'} exited with code "
              f"{self.returncode}; starting it again ({self.restarts} of {MAX_RESTARTS})", file=sys.stderr, flush=True)
        self.proc = start_worker(self.folder, self.runtime_port)
        return self.RESTARTED

    def stop(self) -> None:
        stop(self.proc, grace=3)


def _watch_superlink(proc: subprocess.Popen, host: str, port: int, gone_s: float, ended: threading.Event,
                     worker: Worker | None = None, worker_gone: threading.Event | None = None) -> None:
    """Stop the node once nothing has listened on host:port for ``gone_s``: the SuperLink went
    away with the run it served (a SuperNode would retry it forever); or once the node's warm
    process has died for good (every message would then fail). A warm process that stopped because
    the run cannot use this node leaves the node to hand its error reply on (:func:`_run_node`)."""
    seen = time.monotonic()
    while proc.poll() is None:
        state = worker.check() if worker is not None else Worker.ALIVE
        if state == Worker.GONE:
            worker_gone.set()
            stop(proc, grace=3)
            return
        if state == Worker.FATAL:
            threading.Timer(REPLY_WAIT_S + REPLY_PULL_S, stop, (proc, 3)).start()
            return
        if _listening(host, port):
            seen = time.monotonic()
        elif time.monotonic() - seen >= gone_s:
            ended.set()
            stop(proc, grace=3)
            return
        time.sleep(1)


def start_worker(folder: Path, runtime_port: int | None = None) -> subprocess.Popen:
    """The node's warm process: fedvl's executor when ``runtime_port`` is given, else the worker of
    Flower's per-message ClientApp. Its output goes to this terminal; it imports torch and fedvl
    now, while the node connects, not when the first message arrives."""
    cmd = [sys.executable, "-m", "fedvl.deploy.node_worker", str(folder)]
    if runtime_port:
        cmd = [sys.executable, "-m", "fedvl.deploy.executor", str(folder), "--runtime", f"127.0.0.1:{runtime_port}"]
    return subprocess.Popen(cmd, env=flower_env(), start_new_session=True, preexec_fn=die_with_parent)


def _run_node(cmd: list[str], host: str, port: int, gone_s: float, worker: Worker | None = None,
              poll_s: float = DEFAULT_POLL_S) -> tuple[int, str | None]:
    """Run one SuperNode in its own process group, its output passed through, until it ends,
    reports that the SuperLink refused it (REFUSED) or that its partition is not in the run
    (that line), the SuperLink has been gone for ``gone_s`` (ENDED), or the node's warm worker
    died (WORKER_GONE): (exit code, why)."""
    proc = subprocess.Popen(cmd, env=dict(flower_env(), **{POLL_ENV: str(poll_s)}), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", process_group=0,
                            preexec_fn=die_with_parent)
    ended, worker_gone = threading.Event(), threading.Event()
    threading.Thread(target=_watch_superlink, args=(proc, host, port, gone_s, ended, worker, worker_gone),
                     daemon=True).start()
    why: str | None = None
    give_up = threading.Timer(REPLY_WAIT_S, stop, (proc, 3))
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if SUPERNODE_CONNECTION_ERROR in line:
                why = REFUSED
                break
            if why is None and BAD_PARTITION in line:
                why = line[line.index(BAD_PARTITION) + len("ConfigError: "):].strip()
                give_up.start()  # the ClientApp logs its error before it hands the reply to the SuperNode
            elif any(m in line for m in REPLY_HANDED_ON):
                # fedvl's executor writes why the run cannot use this node before it replies
                why = why or (worker.fatal() if worker is not None else None)
                if why is not None:
                    time.sleep(REPLY_PULL_S)
                    break
    finally:
        give_up.cancel()
        # the SuperNode and its children; short grace: whoever stops `fedvl join` may not wait long
        stop(proc, grace=3)
    if worker_gone.is_set():
        return 1, WORKER_GONE
    return proc.returncode if proc.returncode is not None else 1, ENDED if ended.is_set() else why


def parse_server(server: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port), or one line saying what is wrong."""
    host, sep, port = server.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--server {server!r} is not HOST:PORT (e.g. 192.168.1.10:9092)")
    return host, int(port)


class SecurityMismatch(RuntimeError):
    """The SuperLink answers, but over the other security (TLS vs ``--insecure``) or with a
    certificate the node's CA does not verify: waiting cannot help."""


# What Flower's Fleet API (an HTTP API in flwr 1.42, the SuperNode's first call goes to it) answers
# to a request that carries no node signature. Nothing else answers so: a port that merely accepts
# connections (another program, a half-started server) is not taken for a SuperLink.
FLEET_PROBE_PATH = "/v1/fleet/get-run"
FLEET_UNSIGNED_ANSWER = (401, "Invalid SuperNode authentication")


def _fleet_answer(host: str, port: int, tls_ca: Path | bool | None, timeout: float) -> str | None:
    """One unsigned Fleet API call: None if a Flower SuperLink answered it, else what happened.
    ``tls_ca``: None for plain HTTP, a CA file to verify the server with, False for TLS unverified."""
    import httpx

    url = f"{'http' if tls_ca is None else 'https'}://{host}:{port}{FLEET_PROBE_PATH}"
    verify: ssl.SSLContext | bool = False
    if tls_ca not in (None, False):
        try:
            verify = ssl.create_default_context(cafile=str(tls_ca))
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise ConfigError(f"--root-certificates {tls_ca} is not a PEM CA certificate ({e})") from None
    try:
        r = httpx.post(url, content=b"", headers={"content-type": "application/protobuf"}, verify=verify,
                       timeout=timeout)
    except httpx.TimeoutException:
        return f"no answer within {timeout:.0f}s"
    except httpx.HTTPError as e:
        return " ".join(str(e).split()) or type(e).__name__
    try:
        detail = r.json().get("detail") if r.status_code == FLEET_UNSIGNED_ANSWER[0] else None
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        detail = None
    return None if detail == FLEET_UNSIGNED_ANSWER[1] else f"HTTP {r.status_code}"


def _listening(host: str, port: int) -> bool:
    """Whether anything accepts connections on host:port: whether a SuperLink this node has joined is
    still there (a plain connect, which a SuperLink busy with a round still accepts at once)."""
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


def _probe(host: str, port: int, tls_ca: Path | None, timeout: float) -> str | None:
    """None when a Flower SuperLink answers on host:port as this node would talk to it (TLS with
    ``tls_ca``, or plain); else why not. Raises :class:`SecurityMismatch` when one answers only
    the other way."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:  # refused, unroutable, or a name that does not resolve (gaierror)
        return e.strerror or str(e) or type(e).__name__
    why = _fleet_answer(host, port, tls_ca, timeout)
    if why is None:
        return None
    where = f"the SuperLink at {host}:{port}"
    if tls_ca is None and _fleet_answer(host, port, False, timeout) is None:
        raise SecurityMismatch(f"{where} uses TLS, but this node was started with --insecure: join with "
                               "--root-certificates CA.pem (the CA that signed the server's certificate)")
    if tls_ca is not None and _fleet_answer(host, port, None, timeout) is None:
        raise SecurityMismatch(f"{where} does not use TLS (its server was started with --insecure), but this "
                               "node was given --root-certificates: join with --insecure")
    if tls_ca is not None and "CERTIFICATE_VERIFY_FAILED" in why and _fleet_answer(host, port, False, timeout) is None:
        raise SecurityMismatch(f"{where} uses TLS, but --root-certificates {tls_ca} does not verify its "
                               f"certificate ({why})")
    return f"{host}:{port} accepts connections but does not answer as a Flower SuperLink ({why})"


def _unreachable(host: str, port: int, deadline: float, tls_ca: Path | None = None) -> str | None:
    """Wait until a Flower SuperLink answers on host:port (:func:`_probe`); the last reason it did
    not, if the deadline passed first. A SuperNode pointed at a closed port, or at a program that is
    not a SuperLink, retries forever in silence."""
    while True:
        reason = _probe(host, port, tls_ca, max(1.0, min(5.0, deadline - time.monotonic())))
        if reason is None:
            return None
        if time.monotonic() >= deadline:
            return reason
        # a refused connection costs nothing: look often, so the node starts soon after the SuperLink does
        time.sleep(min(PROBE_EVERY_S, max(0.0, deadline - time.monotonic())))


def join(server: str, partition: int, state_dir: Path, tls_ca: Path | None, port: int | None = None,
         auth_key: Path | None = None, wait_s: float = 300.0, device: str = "", poll_s: float = DEFAULT_POLL_S,
         executor: str = "warm") -> int:
    """Run a SuperNode for ``partition`` in the foreground until the run it serves has ended (its
    SuperLink gone for ``wait_s``: exit 0) or it is stopped.

    A SuperNode gives up after a few seconds when it cannot connect or the SuperLink does
    not (yet) know its key; nodes are often started before ``serve`` has its SuperLink up
    and their keys registered, so the node is restarted until ``wait_s`` have passed."""
    host, server_port = parse_server(server)
    if not 0.01 <= poll_s <= 60:
        raise ConfigError(f"--poll-s must be between 0.01 and 60 seconds, got {poll_s}")
    if not math.isfinite(wait_s) or wait_s < 0:  # nan would compare false with every deadline: wait forever
        raise ConfigError(f"--wait-s must be a finite number of seconds >= 0, got {wait_s}")
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    folder = make_folder()
    worker = None
    quick_exits = 0
    deadline = time.monotonic() + wait_s
    try:
        port = port or free_port()
        if executor == "warm":  # the folder's key (mode 0600) is the SuperExec secret of the node and the executor
            cmd = join_command(server, partition, state_dir, tls_ca, port, auth_key, device, secret=folder / KEY)
        else:
            cmd = join_command(server, partition, state_dir, tls_ca, port, auth_key, device, worker=folder)
        # SIGTERM becomes an exception so the SuperNode and the worker are always stopped with `fedvl join`
        signal.signal(signal.SIGTERM, _interrupt)
        worker = Worker(folder, port if executor == "warm" else None)
        while True:
            reason = _unreachable(host, server_port, time.monotonic(), tls_ca)  # one quick look first
            if reason is not None:
                print(f"fedvl join: the SuperLink at {server} is not reachable ({reason}); waiting up to "
                      f"{max(0.0, deadline - time.monotonic()):.0f}s more", file=sys.stderr, flush=True)
                reason = _unreachable(host, server_port, deadline, tls_ca)
            if reason is not None:
                print(f"fedvl join: error: cannot reach the SuperLink at {server} after {wait_s:.0f}s ({reason}); "
                      "giving up", file=sys.stderr)
                return 1
            started = time.monotonic()
            code, why = _run_node(cmd, host, server_port, wait_s, worker, poll_s)
            if why == WORKER_GONE:
                print(f"fedvl join: error: this node's fedvl {'executor' if executor == 'warm' else 'worker'} "
                      f"exited with code {worker.returncode} {MAX_RESTARTS + 1} times (its error is above); stopping "
                      "this node", file=sys.stderr)
                return 1
            if why is None:
                # The SuperNode ended by itself: its SuperLink went away (Flower's SuperNode gives up
                # after a few retries) or was replaced by a new one that does not know this node (a
                # server restarted with `fedvl serve --resume`, whose run finds this node's client
                # state again). Join again while a SuperLink is there; one that stays gone for
                # wait_s means the run has ended. A node that keeps ending at once stops.
                quick_exits = quick_exits + 1 if time.monotonic() - started < 15 else 0
                if quick_exits >= 3:
                    return code
                if _unreachable(host, server_port, time.monotonic() + wait_s, tls_ca) is None:
                    print(f"fedvl join: the SuperNode left the SuperLink at {server} (exit {code}); joining it "
                          "again", file=sys.stderr, flush=True)
                    time.sleep(1)
                    deadline = time.monotonic() + wait_s
                    continue
                why = ENDED
            if why == ENDED:
                print(f"fedvl join: the run at {server} has ended (its SuperLink has been gone for {wait_s:.0f}s); "
                      "stopping this node", file=sys.stderr)
                return 0
            if why != REFUSED:
                print(f"fedvl join: error: {why}; stopping this node", file=sys.stderr)
                return 2
            # the hint is in the last line too: a first refusal may come only after the deadline
            hint = " (is its public key in the server's --auth-keys?)" if auth_key else ""
            if time.monotonic() > deadline:
                print(f"fedvl join: error: the SuperLink at {server} still refuses this node after {wait_s:.0f}s"
                      f"{hint}; giving up", file=sys.stderr)
                return 1
            print(f"fedvl join: the SuperLink at {server} is not reachable or refused this node{hint}; retrying in 5s",
                  file=sys.stderr, flush=True)
            time.sleep(5)
    except SecurityMismatch as e:
        print(f"fedvl join: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if worker is not None:
            worker.stop()
        shutil.rmtree(folder, ignore_errors=True)
