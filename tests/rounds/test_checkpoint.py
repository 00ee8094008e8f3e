"""Checkpoints: a run killed with SIGKILL mid-round and resumed ends exactly like an
uninterrupted one; a damaged newest checkpoint is reported and the previous one used."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY
from safetensors.torch import save_file

from fedvl.report.history import History
from fedvl.rounds.checkpoint import checkpoint_dirs, commit_round, latest_checkpoint
from fedvl.transport.inprocess import build_federation, simulate
from fedvl.rounds.state import ClientStateStore

# FedDAT keeps per-client state (A_C, head, connector); 3 of 4 clients per round, so
# checkpoints must also carry the states of clients that sat a round out
RUN = [*TINY, "algorithm.rounds=5", "algorithm.fraction_fit=0.75"]


def fedvl(*args, cwd, wait=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "fedvl", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def mid_round(run: Path) -> bool:
    """True while a round is half done: a client has already replaced its state file since the
    newest checkpoint (which hard-links the files as of its round) and that round is not committed."""
    ckpts = checkpoint_dirs(run)
    if not ckpts or ckpts[0][0] >= 5:
        return False
    committed = {p.name: p.stat().st_ino for p in (ckpts[0][1] / "clients").glob("*.safetensors")}
    try:
        return any(p.stat().st_ino != committed.get(p.name) for p in (run / "client_states").glob("*.safetensors"))
    except FileNotFoundError:  # a file replaced while we looked
        return False


def evals(run: Path):
    recs = History.read(run)
    return [r["round"] for r in recs], [r["eval"] for r in recs if "eval" in r]


@pytest.mark.slow
@pytest.mark.parametrize("algo, runtime", [("feddat", "simulator"), ("feddat", "flower-sim"),
                                           ("fedavg algorithm.keep_local=head", "flower-sim")])
def test_sigkill_mid_round_then_resume_matches_uninterrupted_run(algo, runtime, tmp_path):
    """The same under Flower's simulation: its server commits a checkpoint every round too. (FedAvg
    keeps its heads on the clients here, so a client state file tells that a round is half done.)"""
    run_args = [*RUN, *f"algorithm.name={algo}".split(), f"run.runtime={runtime}"]
    ref = fedvl("run", *run_args, "run.name=ref", "--quiet", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    proc = fedvl("run", *run_args, "run.name=killed", "--quiet", cwd=tmp_path, wait=False)
    run = tmp_path / "results" / "killed"
    deadline = time.time() + 300
    while not mid_round(run):
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()}"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert mid_round(run)  # the kill really landed inside a round (not between two)
    killed_at = checkpoint_dirs(run)[0][0]
    assert json.loads((run / "status.json").read_text())["state"] == "running"
    r = fedvl("run", "--resume", str(run), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"resuming from round {killed_at} of 5" in r.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    rounds, got = evals(run)
    assert rounds == [1, 2, 3, 4, 5]  # every round exactly once, nothing lost or repeated
    _, want = evals(tmp_path / "results" / "ref")
    assert got == want  # bit-identical accuracy, balanced accuracy and loss for every client and round
    assert json.loads((run / "summary.json").read_text())["final"]["avg"] == \
        json.loads((tmp_path / "results" / "ref" / "summary.json").read_text())["final"]["avg"]
    again = fedvl("run", "--resume", str(run), cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout


def _fed_and_run(tiny_cfg, run_dir, *extra):
    fed = build_federation(tiny_cfg("algorithm.name=feddat", "algorithm.rounds=3", *extra), status=lambda s: None)
    run_dir.mkdir(parents=True, exist_ok=True)
    return fed, simulate(fed, run_dir, History(run_dir))


@pytest.mark.parametrize("damage", ["truncate_global", "garble_client", "drop_meta", "flip_byte"])
def test_damaged_newest_checkpoint_falls_back_to_previous(tiny_cfg, tmp_path, damage):
    fed, final = _fed_and_run(tiny_cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert [r for r, _ in checkpoint_dirs(run)] == [3, 2]  # keep_checkpoints=2
    newest = checkpoint_dirs(run)[0][1]
    if damage == "truncate_global":
        p = newest / "global.safetensors"
        p.write_bytes(p.read_bytes()[:40])
    elif damage == "garble_client":
        p = next((newest / "clients").iterdir())
        p.unlink()  # a new file, not in place: the hard-linked client_states copy stays intact
        p.write_bytes(b"\0" * 100)
    elif damage == "drop_meta":
        (newest / "meta.json").write_text('{"format": 1, "round": 3, "fil')
    else:  # same size, one byte changed: only the checksum can tell
        p = newest / "global.safetensors"
        data = bytearray(p.read_bytes())
        data[-1] ^= 0xFF
        p.unlink()
        p.write_bytes(bytes(data))
    warnings = []
    ckpt = latest_checkpoint(run, fed.travel, warnings.append)
    assert ckpt is not None and ckpt.round == 2
    assert len(warnings) == 1 and "checkpoint of round 3 is damaged" in warnings[0] and "\n" not in warnings[0]
    # resuming reruns round 3 from round 2's state and lands exactly where the clean run did
    fed2 = build_federation(fed.cfg, status=lambda s: None)
    again = simulate(fed2, run, History(run), resume=True, warn=warnings.append)
    assert again["eval"] == final["eval"]
    assert [r["round"] for r in History.read(run)] == [1, 2, 3]
    assert "resuming from round 2 of 3" in warnings[-1]
    assert latest_checkpoint(run, fed.travel, warnings.append).round == 3  # the damaged one was replaced


def test_resume_truncates_metrics_written_after_the_checkpoint(tiny_cfg, tmp_path):
    fed, final = _fed_and_run(tiny_cfg, tmp_path / "run")
    run = tmp_path / "run"
    # a kill between writing round 3's metrics line and committing round 3: no round-3 checkpoint,
    # and a half-written line at the end of metrics.jsonl
    import shutil

    shutil.rmtree(checkpoint_dirs(run)[0][1])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"round": 4, "tra')
    fed2 = build_federation(fed.cfg, status=lambda s: None)
    again = simulate(fed2, run, History(run), resume=True, warn=lambda m: None)
    assert [r["round"] for r in History.read(run)] == [1, 2, 3]
    assert again["eval"] == final["eval"]


def test_nothing_committed_resume_starts_over(tiny_cfg, tmp_path):
    fed = build_federation(tiny_cfg("algorithm.name=local", "algorithm.rounds=1"), status=lambda s: None)
    run = tmp_path / "run"
    (run / "client_states").mkdir(parents=True)
    (run / "client_states" / "c0-photo.safetensors").write_bytes(b"half a file from a killed run")
    msgs = []
    final = simulate(fed, run, History(run), resume=True, warn=msgs.append)
    assert "starting at round 1" in msgs[0]
    assert [r["round"] for r in History.read(run)] == [1] and "eval" in final


def test_commit_is_atomic_and_checksummed(tmp_path):
    store = ClientStateStore(tmp_path / "client_states")
    store.save("a", {"x": torch.ones(2)})
    g = {"w": torch.arange(3.0)}
    hist = [{"round": 1}]
    path = commit_round(tmp_path, 1, g, store, hist, {}, keep=2)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    meta = json.loads((path / "meta.json").read_text())
    assert set(meta["files"]) == {"global.safetensors", "rng.safetensors", "clients/a.safetensors"}
    # the client saves again (next round): the checkpoint keeps the committed state
    store.save("a", {"x": torch.zeros(2)})
    ckpt = latest_checkpoint(tmp_path, ["w"], lambda m: None)
    assert torch.equal(ckpt.global_params["w"], g["w"]) and ckpt.history == hist
    store.restore(ckpt.path / "clients")
    assert torch.equal(store.load("a")["x"], torch.ones(2))
    # a leftover temporary folder from a kill during a commit is ignored and cleaned up
    (tmp_path / "checkpoints" / ".tmp-round-00002").mkdir()
    save_file({"w": torch.zeros(3)}, tmp_path / "checkpoints" / ".tmp-round-00002" / "global.safetensors")
    assert latest_checkpoint(tmp_path, ["w"], lambda m: None).round == 1
    commit_round(tmp_path, 2, g, store, hist * 2, {}, keep=1)
    assert [r for r, _ in checkpoint_dirs(tmp_path)] == [2]
