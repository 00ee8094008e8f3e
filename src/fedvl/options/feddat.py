"""FedDAT's options (read by :mod:`fedvl.algorithms.feddat`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass
class FedDATOptions:
    dat_weight: float = 0.5
    """FedDAT: w in the Dual-Adapter Teacher h + w·A_C(h) + (1-w)·Â_S(h)."""
    kd_weight: float = 0.5
    """FedDAT: weight of the KD term in both MKD losses (the task loss gets 1 - kd_weight)."""
    kd_temperature: float = 3.0
    feddat_teacher: Literal["dat", "local"] = "dat"
    """FedDAT ablation: "local" replaces the DAT teacher by A_C alone (no DAT)."""
    feddat_mutual: bool = True
    """FedDAT ablation: False trains A_C with the task loss only (one-way KD)."""
    feddat_shared_pass: bool = True
    """FedDAT: when nothing the A_S step moves feeds the encoder's DAT pass (the VL base's frozen connector;
    only A_S and the head train besides A_C), one encoder forward serves the teacher logits and the A_C
    step (3 -> 2 encoder forwards per batch; with dropout on, both roles then see one dropout mask).
    False always runs the three passes."""

    RANGES: ClassVar[dict[str, str]] = {"dat_weight": "[0, 1]", "kd_weight": "[0, 1]", "kd_temperature": "> 0"}
    OWNED: ClassVar[frozenset[str]] = frozenset(RANGES)
    """Checked by feddat's own check only (``fedvl.schema.AlgorithmConfig.OWNED``)."""
