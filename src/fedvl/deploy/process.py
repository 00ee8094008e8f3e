"""The processes of a Flower deployment, as ``fedvl serve`` and ``fedvl join`` start and stop them:
Flower's environment and console scripts, ports, and stopping a process with everything it
spawned (each runs in its own process group and dies with the process that started it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedvl.transport.flower_env import FLOWER_ENV


def flower_env(home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, **FLOWER_ENV)
    # Flower's processes start further Flower processes (flower-superexec, flwr-serverapp,
    # flwr-clientapp) by name: this interpreter's scripts must come first on PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Flower's SuperExec looks for a new ClientApp / ServerApp to launch once a second by default;
    # each message waits for that look, so look every 0.1 s (a local query, no network)
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
    if home is not None:
        env["FLWR_HOME"] = str(home)
    return env


def _bin(name: str) -> str:
    """Flower's console scripts live beside this interpreter (the project's venv)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process serving {host}:{port} exited with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def stop(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """Stop a process started with ``start_new_session`` and everything it spawned."""
    if proc is None or proc.poll() is not None and not _group_alive(proc.pid):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(proc.pid):
            proc.poll()
            time.sleep(0.2)
        if not _group_alive(proc.pid):
            proc.poll()
            return


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the process that started it dies, even by SIGKILL
    (Linux ``PR_SET_PDEATHSIG``; elsewhere a no-op), so a killed ``serve`` or ``join`` leaves no
    SuperLink or SuperNode behind. Their own children are stopped by them on that SIGTERM."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a group whose only members are zombies is gone for our purposes
    try:
        out = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout
    except OSError:
        return True
    return any(s.strip() and not s.strip().startswith("Z") for s in out.splitlines())


def last_error(log: Path) -> str:
    """The line of a Flower log that says what went wrong (the last ERROR line, else the last line)."""
    try:
        lines = [" ".join(x.split()) for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    errors = [x for x in lines if "ERROR" in x or "Error" in x]
    return ((errors or lines or ["the log is empty"])[-1])[:400]
