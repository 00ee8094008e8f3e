"""Round checkpoints: crash-safe commits and resume with fallback.

After every round the runtime commits ``checkpoints/round-NNNNN/``:

* ``global.safetensors``: the global travelling parameters after the round;
* ``clients/<cid>.safetensors``: every client's local state as of the round
  (hard links to the state files, which are never modified in place);
* ``rng.safetensors``: torch's global RNG state (belt and braces: every draw
  is re-seeded from (seed, round, client), and clients build a fresh optimiser
  each round, so nothing else carries over between rounds);
* ``server.safetensors`` (only with a server optimizer, ``algorithm.server_opt``): its
  state, e.g. FedAdam's moments, which does carry over;
* ``meta.json``: the round, the strategy's state, every round record so far
  (the content of metrics.jsonl), the SHA-256 of every file above and of the
  run's resolved config (a resume refuses an edited config.yaml).

The folder is written under a temporary name and renamed into place, so it
exists complete or not at all; the ``keep`` newest are kept. On resume the
newest checkpoint that passes the checksums and loads is used; a damaged one is
reported in one line and the previous one is used instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedvl.algorithms.aggregate import Params
from fedvl.io import atomic_write, file_sha256
from fedvl.rounds.state import ClientStateStore

FORMAT = 1
_NAME = re.compile(r"^round-(\d{5,})$")


class CheckpointDamaged(Exception):
    """A checkpoint that must not be resumed from; the message says why."""


@dataclass
class Checkpoint:
    round: int
    path: Path
    global_params: Params
    history: list[dict[str, Any]]
    strategy_state: dict[str, Any]
    rng_state: torch.Tensor
    server_tensors: Params = field(default_factory=dict)
    """The server optimizer's state (empty: none was saved)."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """(round, folder) of every committed checkpoint, newest first."""
    root = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()] \
        if root.is_dir() else []
    return sorted(found, reverse=True)


def commit_round(run_dir: Path, rnd: int, global_params: Params, store: ClientStateStore,
                 history: list[dict[str, Any]], strategy_state: dict[str, Any], keep: int = 2,
                 config_digest: str | None = None, server_tensors: Params | None = None) -> Path:
    """Write round ``rnd``'s checkpoint atomically and drop all but the ``keep`` newest.
    ``server_tensors``: the server optimizer's state, if it has one."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"round-{rnd:05d}", root / f".tmp-round-{rnd:05d}"
    if tmp.exists():  # left by a run killed while writing
        shutil.rmtree(tmp)
    (tmp / "clients").mkdir(parents=True)
    glob = {k: v.contiguous() for k, v in global_params.items()}
    # through atomic_write for the file mode: safetensors alone creates 0600 files
    atomic_write(tmp / "global.safetensors", lambda f: save_file(glob, f))
    atomic_write(tmp / "rng.safetensors", lambda f: save_file({"torch": torch.get_rng_state()}, f))
    if server_tensors:
        state = {k: v.contiguous() for k, v in server_tensors.items()}
        atomic_write(tmp / "server.safetensors", lambda f: save_file(state, f))
    store.export(tmp / "clients")
    files = {}
    for p in sorted(tmp.rglob("*.safetensors")):
        _fsync(p)
        files[p.relative_to(tmp).as_posix()] = file_sha256(p)
    meta = {"format": FORMAT, "round": rnd, "files": files, "strategy": strategy_state, "history": history,
            "config_sha256": config_digest}
    (tmp / "meta.json").write_text(json.dumps(meta, default=float))
    _fsync(tmp / "meta.json")
    if final.exists():  # a damaged checkpoint of this round, skipped by the resume that got us here
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for _, old in checkpoint_dirs(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path, travel: list[str] | None) -> Checkpoint:
    """Load and verify one checkpoint folder; raise :class:`CheckpointDamaged` on any problem.
    ``travel``: the names its global tensors must have, in the runtime's order (None: whatever
    it holds, for a server whose tensors vary by round, e.g. the knowledge exchange's)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointDamaged(f"meta.json unreadable ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        raise CheckpointDamaged("meta.json is not a fedvl checkpoint description")
    for rel, digest in meta["files"].items():
        p = path / rel
        if not p.is_file():
            raise CheckpointDamaged(f"{rel} is missing")
        if file_sha256(p) != digest:
            raise CheckpointDamaged(f"{rel}: checksum mismatch")
    try:
        loaded = load_file(path / "global.safetensors")
        rng = load_file(path / "rng.safetensors")["torch"]
        server = load_file(path / "server.safetensors") if "server.safetensors" in meta["files"] else {}
        for rel in meta["files"]:
            if rel.startswith("clients/"):
                load_file(path / rel)
    except Exception as e:  # noqa: BLE001  (safetensors raises several types for a garbled file)
        raise CheckpointDamaged(f"safetensors load failed ({type(e).__name__}: {str(e)[:80]})") from None
    if travel is None:
        travel = list(loaded)
    elif set(loaded) != set(travel):
        raise CheckpointDamaged("its global parameters do not match this run's travelling parameters")
    history = meta.get("history")
    if not isinstance(history, list) or len(history) != meta.get("round"):
        raise CheckpointDamaged("its round records do not match its round")
    # the runtime's own order (not the file's): key order decides e.g. the order DP noise is drawn in
    return Checkpoint(meta["round"], path, {n: loaded[n] for n in travel}, history, meta.get("strategy") or {}, rng,
                      server)


def latest_checkpoint(run_dir: Path, travel: list[str] | None, warn: Callable[[str], None]) -> Checkpoint | None:
    """The newest checkpoint that verifies; every damaged newer one is reported with ``warn``."""
    for rnd, path in checkpoint_dirs(run_dir):
        try:
            return read_checkpoint(path, travel)
        except CheckpointDamaged as e:
            warn(f"fedvl: warning: checkpoint of round {rnd} is damaged ({e}); using the previous one")
    return None


def checkpoint_config_digest(run_dir: Path) -> tuple[int, str] | None:
    """(round, config SHA-256) recorded by the newest checkpoint that has one (None: nothing to compare)."""
    for rnd, path in checkpoint_dirs(run_dir):
        try:
            digest = json.loads((path / "meta.json").read_text()).get("config_sha256")
        except (OSError, ValueError, AttributeError):
            continue  # a damaged checkpoint is reported (and skipped) by the resume itself
        if isinstance(digest, str):
            return rnd, digest
    return None


def resume_round(run_dir: Path) -> int:
    """The round a ``--resume`` of ``run_dir`` starts at (one past its newest committed checkpoint)."""
    dirs = checkpoint_dirs(run_dir)
    return dirs[0][0] + 1 if dirs else 1


def resume_from(run_dir: Path, names: list[str] | None, store: ClientStateStore, history, rounds: int,
                restore: Callable[[Checkpoint], None], warn: Callable[[str], None]) -> int:
    """The resume path of every server side: the newest good checkpoint of ``run_dir`` (damaged
    ones are reported with ``warn`` and skipped; ``names``: as :func:`read_checkpoint`'s ``travel``)
    puts the clients' states in ``store`` and the round records in ``history`` back, then
    ``restore`` the server's own state from it, then torch's RNG. Returns the round to start at."""
    ckpt = latest_checkpoint(run_dir, names, warn)
    store.restore(ckpt.path / "clients" if ckpt else None)
    history.reset(ckpt.history if ckpt else [])
    if ckpt is None:
        warn("fedvl: no complete round to resume from; starting at round 1")
        return 1
    restore(ckpt)
    torch.set_rng_state(ckpt.rng_state)
    warn(f"fedvl: resuming from round {ckpt.round} of {rounds}")
    return ckpt.round + 1
