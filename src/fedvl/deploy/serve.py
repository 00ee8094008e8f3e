"""``fedvl serve`` on a real Flower deployment: a SuperLink and the fedvl ServerApp.

``serve`` writes a Flower App folder by hand (no ``flwr new``, no hub), whose
components are :mod:`fedvl.deploy.server_app` and whose run config carries the
experiment config; points a private ``FLWR_HOME`` at the SuperLink; starts
``flower-superlink``; submits the run with ``flwr run``; and stops everything it
started when the run ends, fails or is interrupted. By default (``--executor warm``)
the SuperLink launches no ServerApp process: ``serve`` claims the run and runs the
ServerApp itself (:mod:`fedvl.deploy.server_task`); ``--executor flower`` leaves it
to Flower's ``flwr-serverapp`` and streams its output. Either writes the same
results folder as the in-process simulator.

Node authentication (``serve --auth-keys DIR``, ``join --auth-key KEY``) is Flower's
own: the SuperLink runs with ``--enable-supernode-auth`` (which Flower allows only
with TLS), ``serve`` registers every public key in DIR with ``flwr supernode
register`` before any node may join, and a SuperNode proves it holds the matching
private key (:mod:`fedvl.deploy.join`); a node whose key was not registered is refused.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fedvl.deploy.names import (
    CLIENT_APP_REF,
    CONFIG_KEY,
    DEPLOYMENT_FILE,
    EXECUTORS,
    RESULTS_KEY,
    RESUME_KEY,
    RUN_TOKEN_KEY,
    SERVER_APP_REF,
)
from fedvl.deploy.node_worker import KEY, make_folder
from fedvl.deploy.process import _bin, die_with_parent, flower_env, last_error, stop, wait_for_port
from fedvl.deploy.submit import APP, READY
from fedvl.runfolder import read_status, wait_until_free
from fedvl.schema import ConfigError, ExperimentConfig, dump_config

RELEASE_WAIT_S = 60.0  # serve --resume: how long the previous ServerApp may take to let go of the results folder


@dataclass
class TLS:
    """Certificates by path: the SuperLink's certificate and key, and the CA that signed it
    (nodes and the ``flwr`` CLI verify the SuperLink against the CA)."""

    certfile: Path
    keyfile: Path
    cafile: Path

    def check(self) -> TLS:
        for p in (self.certfile, self.keyfile, self.cafile):
            if not Path(p).is_file():
                raise ConfigError(f"TLS file not found: {p}")
        return self


def write_app(app_dir: Path, cfg: ExperimentConfig, run_dir: Path, token: str, resume: bool = False) -> None:
    """A minimal Flower App: its components are fedvl's; nothing to install. ``token`` names the run on
    every node (the same on ``--resume``, so the nodes find their clients' state again)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    # json.dumps gives a valid TOML basic string for any YAML text
    (app_dir / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedvl-run"
version = "1.0.0"
description = "fedvl experiment on a Flower deployment"
license = "MIT"
dependencies = []

[tool.flwr.app]
publisher = "fedvl"

[tool.flwr.app.components]
serverapp = "{SERVER_APP_REF}"
clientapp = "{CLIENT_APP_REF}"

[tool.flwr.app.config]
{CONFIG_KEY} = {json.dumps(dump_config(cfg))}
{RESULTS_KEY} = {json.dumps(str(run_dir.resolve()))}
{RUN_TOKEN_KEY} = {json.dumps(token)}
{RESUME_KEY} = {json.dumps(resume)}
""")


def auth_public_keys(folder: Path) -> list[Path]:
    """The node public keys of ``serve --auth-keys``: every ``*.pub`` file (OpenSSH format, an
    elliptic-curve key on a NIST curve, e.g. ``ssh-keygen -t ecdsa -b 384``)."""
    keys = sorted(Path(folder).glob("*.pub"))
    if not keys:
        raise ConfigError(f"--auth-keys {folder}: no *.pub public key files (make one per node with "
                          "`ssh-keygen -t ecdsa -b 384 -N '' -f node0`)")
    return keys


def register_nodes(keys: list[Path], env: dict[str, str], cwd: Path, log=print) -> None:
    """Register each allowed node's public key with the running SuperLink (Flower's control API)."""
    for key in keys:
        out = subprocess.run([_bin("flwr"), "supernode", "register", str(key.resolve()), "fedvl"], env=env, cwd=cwd,
                             capture_output=True, text=True, timeout=120, check=False)
        if out.returncode != 0:
            detail = " ".join((out.stdout + out.stderr).split())[-300:]
            raise ConfigError(f"the SuperLink refused the node key {key}: {detail}")
    log(f"node authentication: {len(keys)} node key(s) registered; any other node is refused")


def write_connection(home: Path, address: str, tls: TLS | None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    security = f"root-certificates = {json.dumps(str(Path(tls.cafile).resolve()))}" if tls else "insecure = true"
    (home / "config.toml").write_text(f"""[superlink]
default = "fedvl"

[superlink.fedvl]
address = {json.dumps(address)}
{security}
""")


def run_token(run_dir: Path) -> str:
    """The token of the deployed run in ``run_dir`` (its ServerApp wrote it when the run began)."""
    try:
        return str(json.loads((run_dir / DEPLOYMENT_FILE).read_text())[RUN_TOKEN_KEY])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{run_dir} holds no deployed run to resume (no readable {DEPLOYMENT_FILE}; a run made "
                          "by `fedvl run` resumes with `fedvl run --resume`)") from None


class SuperLink:
    """A ``flower-superlink`` process and its private Flower home (``scratch``, 0700, with the SuperExec
    secret of ``executor="warm"``). Started before the experiment's config is even loaded
    (:func:`start_superlink`): it takes a second or two to listen, which the config's checks and
    imports then overlap."""

    def __init__(self, host: str, port: int, tls: TLS | None, node_auth: bool, executor: str = "warm"):
        if executor not in EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
        self.host, self.port, self.tls, self.executor = host, port, tls, executor
        self.local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.scratch = make_folder(prefix="fedvl-serve-")
        self.home = self.scratch / "flwr-home"
        write_connection(self.home, f"{self.local}:{port}", tls)
        self.env = flower_env(self.home)
        cmd = [_bin("flower-superlink"), "--host", host, "--port", str(port)]
        cmd += (["--ssl-certfile", str(tls.certfile), "--ssl-keyfile", str(tls.keyfile),
                 "--ssl-ca-certfile", str(tls.cafile)] if tls else ["--insecure"])
        cmd += ["--enable-supernode-auth"] if node_auth else []
        if executor == "warm":  # no flower-superexec: the run is a task that `serve` claims with the secret
            cmd += ["--isolation", "process", "--superexec-auth-secret-file", str(self.scratch / KEY)]
        self.log_path = self.scratch / "superlink.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent)
        self.failed = False  # it did not start: its log stays for the error message that names it
        # `flwr run`, importing Flower's CLI meanwhile; it submits once READY is written (fedvl.deploy.submit)
        self.runner = subprocess.Popen([sys.executable, "-m", "fedvl.deploy.submit", str(self.scratch)]
                                       + (["--stream"] if executor == "flower" else []),
                                       env=self.env, cwd=self.scratch, start_new_session=True,
                                       preexec_fn=die_with_parent)

    def wait_listening(self) -> None:
        try:
            wait_for_port(self.local, self.port, 60, self.proc)
        except (RuntimeError, TimeoutError) as e:  # e.g. a TLS file it cannot load: its own words, not just a code
            self.log.flush()
            self.failed = True
            raise RuntimeError(f"the SuperLink did not start ({e}): {last_error(self.log_path)} "
                               f"(full log: {self.log_path})") from None

    def submit(self) -> None:
        """Let ``flwr run`` submit the Flower App written in the folder (once :meth:`wait_listening`)."""
        (self.scratch / READY).touch()

    def stop(self, discard: bool = False) -> None:
        """``discard``: also remove its folder (nothing was run, nothing to look at)."""
        stop(self.runner)
        stop(self.proc)
        self.log.close()
        if discard and not self.failed:
            shutil.rmtree(self.scratch, ignore_errors=True)


def start_superlink(host: str, port: int, tls: TLS | None, auth_keys: Path | None,
                    executor: str = "warm") -> SuperLink:
    if tls:
        tls.check()
    if auth_keys is not None and tls is None:
        raise ConfigError("--auth-keys needs TLS (Flower authenticates nodes only over TLS): give --ssl-certfile, "
                          "--ssl-keyfile and --ssl-ca-certfile")
    return SuperLink(host, port, tls, auth_keys is not None, executor)


def serve(cfg: ExperimentConfig, run_dir: Path, host: str, port: int, tls: TLS | None, log=print,
          auth_keys: Path | None = None, resume: bool = False, link: SuperLink | None = None) -> int:
    """Start a SuperLink (unless ``link`` is one already started), submit the experiment, wait for
    it, stop the SuperLink. ``auth_keys``: a folder of node public keys; only those nodes may join
    (needs TLS). ``resume``: continue the run in ``run_dir`` from its newest checkpoint (its nodes keep
    their clients' state by the run's token). Returns 0 when the results folder says ``complete``."""
    from fedvl.algorithms import get_algorithm

    submitted = False
    try:
        if get_algorithm(cfg.algorithm.name).pooled:
            raise ConfigError(f"algorithm {cfg.algorithm.name} pools every client's data in one place; it has no "
                              "federated deployment")
        keys = auth_public_keys(auth_keys) if auth_keys is not None else []
        link = link or start_superlink(host, port, tls, auth_keys)
        if link.executor == "warm":  # Flower's runtime and the experiment's code, imported while the SuperLink starts
            import threading

            import fedvl.deploy.server_app  # noqa: F401
            import fedvl.deploy.server_task  # noqa: F401
            from fedvl.models.backbones import import_text_encoder

            threading.Thread(target=import_text_encoder, daemon=True, name="fedvl-imports").start()
        token = run_token(run_dir) if resume else secrets.token_hex(8)
        if resume:  # a server killed a moment ago: its SuperLink is still stopping the ServerApp that holds the folder
            wait_until_free(run_dir, RELEASE_WAIT_S, log)
        write_app(link.scratch / APP, cfg, run_dir, token, resume)
        link.wait_listening()
        if keys:
            register_nodes(keys, link.env, link.scratch, log)
        log(f"SuperLink listening on {host}:{port} ({'TLS' if tls else 'insecure: no TLS'}); "
            f"on each client machine run: fedvl join --server {link.local}:{port} --partition i"
            + (" --root-certificates CA.pem" if tls else " --insecure") + (" --auth-key NODE_KEY" if keys else ""))
        link.submit()
        submitted = True
        if link.executor == "warm":
            _run_here(link, token)
        else:
            link.runner.wait()
    finally:
        if link is not None:
            link.stop(discard=not submitted)
        _settle_status(run_dir)
    record = read_status(run_dir) or {"state": "missing"}
    state = record.get("state")
    if state != "complete":
        why = f": {record['error']}" if record.get("error") else ""
        print(f"fedvl serve: error: the deployed run did not complete (status: {state}{why}); SuperLink log: "
              f"{link.log_path}", file=sys.stderr)
        return 1
    shutil.rmtree(link.scratch, ignore_errors=True)
    return 0


def _run_here(link: SuperLink, token: str) -> None:
    """Claim the submitted run and run its ServerApp in this process (:mod:`fedvl.deploy.server_task`);
    a run that another program submitted to this SuperLink meanwhile is refused and the wait goes on."""
    from fedvl.deploy.server_task import ServerTask, SubmitError

    ca = Path(link.tls.cafile).read_bytes() if link.tls else None
    task = ServerTask(f"{link.local}:{link.port}", (link.scratch / KEY).read_bytes(), ca)
    try:
        while not task.run(task.claim(link.runner, link.proc), token, link.proc):
            pass
    except SubmitError as e:
        raise ConfigError(str(e)) from None
    finally:
        task.close()


def _settle_status(run_dir: Path, wait_s: float = 20.0) -> None:
    """A ServerApp stopped with its SuperLink (Ctrl-C or SIGTERM on ``serve``) may leave status
    ``running``, or ``interrupted`` without a reason: once no process holds the run folder's lock,
    say ``interrupted`` and why."""
    from fedvl.rounds.checkpoint import resume_round
    from fedvl.runfolder import RunFolder, RunFolderError, write_status

    def unexplained() -> bool:
        # still `running`, or `interrupted` by the ServerApp itself (it ends with its SuperExec), which
        # cannot know why: either way this process says why
        rec = read_status(run_dir) or {}
        return rec.get("state") == "running" or (rec.get("state") == "interrupted" and "reason" not in rec)

    if not unexplained():
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            folder = RunFolder(run_dir).acquire(fresh=False)
            break
        except RunFolderError:  # the ServerApp still ends its run
            if time.monotonic() > deadline:
                return
            time.sleep(0.5)
    try:
        if unexplained():
            write_status(run_dir, "interrupted", reason="fedvl serve stopped before the run ended",
                         resume_from_round=resume_round(run_dir))
    finally:
        folder.release()
