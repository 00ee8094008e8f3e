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
