"""Per-client state on disk, so memory does not grow with the number of clients.

Each client's local tensors (e.g. FedDAT's A_C and head, or a local-only
model's trainable part) are one safetensors file, written atomically
(write to a temporary file, then rename) so a crash never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ClientStateStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, client_id: str) -> Path:
        return self.root / f"{client_id}.safetensors"

    def save(self, client_id: str, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            atomic_save_tensors(tensors, self._path(client_id))

    def load(self, client_id: str) -> dict[str, torch.Tensor] | None:
        p = self._path(client_id)
        return load_file(p) if p.is_file() else None
