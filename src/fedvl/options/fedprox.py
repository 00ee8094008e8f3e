"""FedProx's options (read by :mod:`fedvl.algorithms.fedprox`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass
class FedProxOptions:
    prox_mu: float = 0.01
    """FedProx proximal weight (only used by fedprox)."""

    RANGES: ClassVar[dict[str, str]] = {"prox_mu": ">= 0"}
    OWNED: ClassVar[frozenset[str]] = frozenset(RANGES)
    """Checked by fedprox's own check only (``fedvl.schema.AlgorithmConfig.OWNED``)."""
