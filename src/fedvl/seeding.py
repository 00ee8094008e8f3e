"""Randomness derived from names, so every runtime (and a resumed run) draws the same numbers."""

from __future__ import annotations

import zlib


def derived_seed(*parts: object) -> int:
    """A 32-bit seed from (seed, purpose, round, client, ...): no generator state to carry between rounds."""
    return zlib.crc32("/".join(map(str, parts)).encode())
