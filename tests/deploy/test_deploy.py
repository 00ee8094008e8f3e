"""A real Flower deployment on 127.0.0.1: a SuperLink and two SuperNodes as separate
processes, FedDAT for 2 rounds on the tiny model (in the clear, over TLS, and over TLS with
SecAgg+ and node authentication); every process is stopped by the test."""

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import time
import sys
from pathlib import Path

import pytest

from fedvl.report.history import History
from deploy_fixtures import assert_as_in_process, running_with  # tests/deploy_fixtures.py
from kt_fixtures import KT_TINY  # tests/kt_fixtures.py

FEDVL = str(Path(sys.executable).parent / "fedvl")


def _make_certs(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a SuperLink certificate for 127.0.0.1 / localhost, signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedvl test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = d / "ca.pem", d / "server.pem", d / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def _node_key(d: Path, name: str) -> Path:
    """A node's key pair as `ssh-keygen -t ecdsa -b 384` writes it: NAME (private) and NAME.pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()))
    (d / f"{name}.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                  serialization.PublicFormat.OpenSSH))
    return d / name


@pytest.mark.slow
@pytest.mark.parametrize("tls, secure", [(False, False), (True, False), (True, True)],
                         ids=["insecure-flower-executors", "tls", "tls-secagg-auth"])
def test_real_deployment_two_supernodes_feddat(tls, secure, tiny_overrides, tmp_path):
    """`serve` runs the ServerApp itself and the nodes run fedvl's warm executor, except in the first
    case: Flower's processes on both sides (`--executor flower`): a flwr-serverapp for the run, its
    output streamed, and a flwr-clientapp per message, each handing its message to the node's warm worker."""
    from fedvl.deploy.process import free_port, stop

    args = tiny_overrides + ["algorithm.name=feddat", "data.num_clients=2", "data.domains=photo,sketch",
                             "run.name=dep", "run.round_timeout_s=600"] + (["run.secagg=true"] if secure else [])
    port = free_port()
    if tls:
        ca, cert, key = _make_certs(tmp_path)
        server_sec = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--ssl-ca-certfile", str(ca)]
        node_sec = ["--root-certificates", str(ca)]
    else:
        server_sec = node_sec = ["--insecure"]
    keys = [[] for _ in range(2)]
    if secure:  # node authentication: the two nodes' public keys are registered, an intruder's is not
        server_sec += ["--auth-keys", str(tmp_path / "allowed")]
        keys = [["--auth-key", str(_node_key(tmp_path / "allowed", f"node{i}"))] for i in range(2)]
        intruder_key = _node_key(tmp_path / "other", "intruder")
    procs = []
    try:
        server = subprocess.Popen([FEDVL, "serve", *args, "--host", "127.0.0.1", "--port", str(port), *server_sec,
                                   *([] if tls else ["--executor", "flower"])],
                                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        procs.append(server)
        for i in range(2):
            procs.append(subprocess.Popen(
                [FEDVL, "join", "--server", f"127.0.0.1:{port}", "--partition", str(i),
                 "--state-dir", str(tmp_path / f"node{i}"), *node_sec, *keys[i],
                 *([] if tls else ["--executor", "flower"])],
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        if secure:  # claims partition 0 with a key the server never registered
            with open(tmp_path / "intruder.log", "w") as intruder_log:  # the child keeps its own handle
                procs.append(subprocess.Popen(
                    [FEDVL, "join", "--server", f"127.0.0.1:{port}", "--partition", "0",
                    "--state-dir", str(tmp_path / "intruder"), *node_sec, "--auth-key", str(intruder_key),
                    "--wait-s", "20"],
                    cwd=tmp_path, stdout=intruder_log, stderr=subprocess.STDOUT, start_new_session=True))
        out, _ = server.communicate(timeout=1500)
        assert server.returncode == 0, out[-3000:]
        # Flower's ServerApp process (and the log stream that carries its output) only where asked for
        assert ("Start `flwr-serverapp` process" in out) == (not tls), out[-3000:]
        assert ("Starting logstream" in out) == (not tls), out[-3000:]
    finally:
        for p in procs:
            stop(p, grace=5)
    for p in procs:  # nothing this test started is left running, children included
        assert p.poll() is not None
    assert not running_with(f"127.0.0.1:{port}"), "a process this test started is still running"
    run = tmp_path / "results" / "dep"
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    hist = History.read(run)
    assert [r["round"] for r in hist] == [1, 2] and sorted(hist[-1]["eval"]) == ["c0-photo", "c1-sketch"]
    # A_C (and the head) stayed on each node, in the node's own state folder, not on the server
    assert [p.name for p in sorted((tmp_path / "node0").rglob("c0-photo.*"))] == \
        ["c0-photo.r00001.safetensors", "c0-photo.r00002.safetensors"]  # one per round, for a restarted server
    assert len(list((tmp_path / "node1").rglob("c1-sketch.r*.safetensors"))) == 2
    assert not list(run.glob("client_states/*.safetensors"))  # nothing client-local on the server
    # the same numbers as the in-process simulator (under SecAgg+ within its quantisation, which
    # Adam carries on into round 2)
    assert_as_in_process(args, hist, tmp_path, tol=2e-2 if secure else 1e-5, drop=("run.name", "run.secagg"))
    if secure:
        assert all(r["secagg"]["clients"] == 2 for r in hist)
        refused = (tmp_path / "intruder.log").read_text()
        assert procs[-1].returncode == 1  # refused for 20 s, then it gives up
        assert "Exit Code: 305" in refused and "is its public key in the server's --auth-keys" in refused
        assert "still refuses this node after 20s" in refused
        assert not list((tmp_path / "intruder").rglob("*.safetensors"))  # it never trained


# two clients on 127.0.0.1: FedDAT on the tiny VL model; FedMMKT with the tiny generator (pretrained by
# the server, which alone generates and judges) and task models of two architectures; kt-fedavg with two
# of one architecture, whose average comes down with the evaluation and is where round r + 1 starts
_KT2 = [o for o in KT_TINY if not o.startswith(("fedmmkt.domains", "fedmmkt.archs", "algorithm.rounds"))] \
    + ["fedmmkt.domains=night,sketch"]
DEPLOYED = {
    "feddat": ["algorithm.name=feddat", "data.num_clients=2", "data.domains=photo,sketch"],
    "fedmmkt": _KT2 + ["algorithm.name=fedmmkt", "fedmmkt.archs=cnn,mlp"],
    "kt-fedavg": _KT2 + ["algorithm.name=kt-fedavg", "fedmmkt.archs=cnn,cnn"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DEPLOYED))
def test_serve_resume_after_sigkill_mid_round_ends_as_an_uninterrupted_run(name, tiny_overrides, tmp_path):
    """`fedvl serve` is killed (SIGKILL) after both nodes trained round 3 and before the server
    committed it; `fedvl serve --resume` on the same port continues from round 2's checkpoint, the
    running nodes join its new SuperLink, train round 3 again from their state as of round 2, and
    the run ends with the in-process simulator's numbers."""
    from fedvl.deploy.process import free_port, stop

    args = tiny_overrides + DEPLOYED[name] + ["algorithm.rounds=4", "run.round_timeout_s=600"]
    port, run = free_port(), tmp_path / "results" / "dep"
    serve = [FEDVL, "serve", "--host", "127.0.0.1", "--port", str(port), "--insecure"]
    procs = [subprocess.Popen([FEDVL, "join", "--server", f"127.0.0.1:{port}", "--partition", str(i), "--insecure",
                               "--state-dir", str(tmp_path / f"node{i}"), "--wait-s", "60"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for i in range(2)]
    try:
        first = subprocess.Popen(serve + [*args, "run.name=dep"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(first)
        deadline = time.monotonic() + 600
        while not all(list((tmp_path / f"node{i}").rglob("*.r00003.safetensors")) for i in range(2)):
            assert first.poll() is None and time.monotonic() < deadline, "the first server ended before round 3"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert not (run / "checkpoints" / "round-00003").exists()  # round 3 was lost with the server
        again = subprocess.run(serve + ["--resume", str(run)], cwd=tmp_path, capture_output=True, text=True,
                               timeout=900)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "resuming from round 2 of 4" in again.stdout + again.stderr
    finally:
        for p in procs:
            stop(p, grace=5)
    assert not running_with(f"127.0.0.1:{port}"), "a process this test started is still running"
    hist = History.read(run)
    assert [r["round"] for r in hist] == [1, 2, 3, 4]
    # FedMMKT: the server's own side (ensemble, filter, generator update, fidelity) as in process too
    assert_as_in_process(args, hist, tmp_path, parts=("server", "generator"))
    assert not list(run.glob("client_states/*.safetensors"))  # client state stays on the nodes
    assert len(list((tmp_path / "node0").rglob("*.r0000[234].safetensors"))) == 3  # the newest 3 rounds
    # and a resume of a run that was never deployed says so in one line
    out = subprocess.run(serve + ["--resume", str(tmp_path / "sim")], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "already complete" in out.stdout


def test_node_authentication_options_map_to_flowers(tmp_path):
    """`join --auth-key` becomes the SuperNode's private key; `serve --auth-keys` needs TLS and
    at least one public key; both refuse in one line before starting anything."""
    from fedvl.config import load_config
    from fedvl.deploy.join import join_command
    from fedvl.deploy.serve import auth_public_keys, serve
    from fedvl.schema import ConfigError

    key = _node_key(tmp_path / "keys", "node0")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cmd = join_command("h:9092", 0, tmp_path / "s", ca, 1234, key)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key.resolve())
    assert "--root-certificates" in cmd and "--insecure" not in cmd
    with pytest.raises(ConfigError, match="needs TLS"):
        join_command("h:9092", 0, tmp_path / "s", None, 1234, key)
    with pytest.raises(ConfigError, match="node private key not found"):
        join_command("h:9092", 0, tmp_path / "s", ca, 1234, tmp_path / "missing")
    assert auth_public_keys(tmp_path / "keys") == [tmp_path / "keys" / "node0.pub"]
    with pytest.raises(ConfigError, match="no \\*.pub public key"):
        auth_public_keys(tmp_path / "s")
    cfg = load_config(None, ["model.name=tiny", "run.runtime=flower-deploy"])
    with pytest.raises(ConfigError, match="--auth-keys needs TLS"):
        serve(cfg, tmp_path / "run", "127.0.0.1", 1, None, auth_keys=tmp_path / "keys")


def test_join_imports_neither_torch_nor_flower():
    """`fedvl join` only starts, watches and stops the node's processes: torch and Flower load in
    its worker and its SuperNode, never in the join process (a node that gives up does so at once)."""
    from fedvl.deploy.process import flower_env, free_port

    code = ("import sys; from fedvl.cli import main; "
            f"code = main(['join', '--server', '127.0.0.1:{free_port()}', '--partition', '0', '--insecure', "
            "'--wait-s', '0']); print(code, sorted(m for m in ('torch', 'flwr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=flower_env(), timeout=60)
    assert out.stdout.strip() == "1 []", out.stderr


@pytest.mark.slow
def test_a_generative_vlm_deployed_on_two_nodes_gives_the_in_process_numbers(vlm_checkpoint, tmp_path):
    """hf-vlm over serve/join: each node renders its partition with the checkpoint's processor, trains
    LoRA on the answer tokens and generates its answers; the server sees the LoRA factors only."""
    from conftest import vlm_overrides

    from fedvl.deploy.process import free_port, stop

    args = vlm_overrides(vlm_checkpoint("qwen2_vl"), tmp_path, "data.num_clients=2", "data.domains=photo,sketch",
                         "run.name=dep", "run.round_timeout_s=600")
    port = free_port()
    procs = []
    try:
        server = subprocess.Popen([FEDVL, "serve", *args, "--host", "127.0.0.1", "--port", str(port), "--insecure"],
                                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        procs.append(server)
        for i in range(2):
            procs.append(subprocess.Popen(
                [FEDVL, "join", "--server", f"127.0.0.1:{port}", "--partition", str(i),
                 "--state-dir", str(tmp_path / f"node{i}"), "--insecure"],
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        out, _ = server.communicate(timeout=900)
        assert server.returncode == 0, out[-3000:]
    finally:
        for p in procs:
            stop(p, grace=5)
    assert not running_with(f"127.0.0.1:{port}"), "a process this test started is still running"
    hist = History.read(tmp_path / "results" / "dep")
    assert [r["round"] for r in hist] == [1, 2]
    assert_as_in_process(args, hist, tmp_path, skip=("gen_seconds",))
