"""Per-client state on disk, so memory does not grow with the number of clients.

Each client's local tensors (e.g. FedDAT's A_C and head, or a local-only
model's trainable part) are one safetensors file, ``root/<cid>.safetensors``,
written atomically (temporary file, then rename) and never modified in place.
That is what makes round commits consistent: a checkpoint (``runtime.checkpoint``)
hard-links every client's file as of the round it commits, a later save
replaces the name with a new file and leaves the checkpoint's copy alone, and a
resumed run puts the checkpoint's files back with :meth:`restore`, so clients
that had already trained in the interrupted round lose that half-round.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedvl.io import atomic_write

SUFFIX = ".safetensors"


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (files are never modified in place, so sharing an inode is safe), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class ClientStateStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, client_id: str) -> Path:
        return self.root / f"{client_id}{SUFFIX}"

    def save(self, client_id: str, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            contiguous = {k: v.contiguous() for k, v in tensors.items()}
            atomic_write(self._path(client_id), lambda tmp: save_file(contiguous, tmp))

    def load(self, client_id: str) -> dict[str, torch.Tensor] | None:
        p = self._path(client_id)
        return load_file(p) if p.is_file() else None

    def files(self) -> dict[str, Path]:
        """client id -> its state file."""
        if not self.root.is_dir():
            return {}
        return {p.name[:-len(SUFFIX)]: p for p in sorted(self.root.glob(f"*{SUFFIX}"))}

    def export(self, dest: Path) -> None:
        """Put every client's current state into ``dest`` (a checkpoint being written)."""
        dest.mkdir(parents=True, exist_ok=True)
        for cid, src in self.files().items():
            link_or_copy(src, dest / f"{cid}{SUFFIX}")

    def restore(self, src: Path | None) -> None:
        """Drop every state (and any temporary file a kill left) and take those in ``src``
        (a checkpoint's clients folder; None = no client has any state yet)."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.is_file() and (p.name.endswith(SUFFIX) or p.name.endswith(".tmp")):
                    p.unlink()
        if src is not None and src.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            for p in src.glob(f"*{SUFFIX}"):
                link_or_copy(p, self.root / p.name)

    def at(self, rnd: int, fit: bool) -> ClientStateStore:
        """The store as round ``rnd``'s train (``fit``) or evaluate message sees it; one state per
        client here (the server's checkpoints keep the older ones)."""
        return self


class RoundedStateStore(ClientStateStore):
    """A deployed node's client states, one file per client and round (``<cid>.rNNNNN.safetensors``),
    the newest ``keep`` kept: a server that restarts from its checkpoint of round r sends round
    r + 1 again, and the node must then train from its state as of round r, not from the state its
    lost round r + 1 already left (the node's own checkpoint, as the server's holds the global side)."""

    def __init__(self, root: Path, keep: int = 3):
        super().__init__(root)
        self.keep = keep

    def at(self, rnd: int, fit: bool) -> _RoundView:
        # a train message of round r starts from the newest state before r; an evaluation of
        # round r sees the state that round's training left (and replaces it where the evaluation
        # brings new weights: kt-fedavg's architecture average)
        return _RoundView(self, newest=rnd - 1 if fit else rnd, write=rnd)

    def rounds(self, client_id: str) -> list[tuple[int, Path]]:
        """(round, file) of this client's states, newest first."""
        out = []
        for p in self.root.glob(f"{client_id}.r*{SUFFIX}") if self.root.is_dir() else []:
            tag = p.name[len(client_id) + 2:-len(SUFFIX)]
            if tag.isdigit():
                out.append((int(tag), p))
        return sorted(out, reverse=True)


class _RoundView(ClientStateStore):
    """One message's view of a :class:`RoundedStateStore`: reads the newest state up to round
    ``newest``, writes round ``write``'s."""

    def __init__(self, store: RoundedStateStore, newest: int, write: int):
        super().__init__(store.root)
        self.store, self.newest, self.write = store, newest, write

    def _path(self, client_id: str) -> Path:
        return self.root / f"{client_id}.r{self.write:05d}{SUFFIX}"

    def load(self, client_id: str) -> dict[str, torch.Tensor] | None:
        return next((load_file(p) for rnd, p in self.store.rounds(client_id) if rnd <= self.newest), None)

    def save(self, client_id: str, tensors: dict[str, torch.Tensor]) -> None:
        super().save(client_id, tensors)
        for _, old in self.store.rounds(client_id)[self.store.keep:]:
            old.unlink(missing_ok=True)
