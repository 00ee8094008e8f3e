"""Per-client state on disk, so memory does not grow with the number of clients.

Each client's local tensors (e.g. FedDAT's A_C and head, or a local-only
model's trainable part) are one safetensors file, written atomically
(write to a temporary file, then rename) so a crash never leaves half a file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedvl.io import atomic_write


class ClientStateStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, client_id: str) -> Path:
        return self.root / f"{client_id}.safetensors"

    def save(self, client_id: str, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            contiguous = {k: v.contiguous() for k, v in tensors.items()}
            atomic_write(self._path(client_id), lambda tmp: save_file(contiguous, tmp))

    def load(self, client_id: str) -> dict[str, torch.Tensor] | None:
        p = self._path(client_id)
        return load_file(p) if p.is_file() else None
