"""The server's aggregation and update-checking options, for every algorithm of the parameter family
(read by :mod:`fedvl.algorithms.aggregate`: the robust rules, norm clipping, update validation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass
class RobustOptions:
    aggregator: Literal["mean", "median", "trimmed_mean", "krum"] = "mean"
    """Server rule for the travelling parameters, for every algorithm: mean (FedAvg, weighted as
    ``aggregation`` says), median (coordinate-wise), trimmed_mean (coordinate-wise, ``trim_ratio``)
    or krum (``krum_byzantine``, ``krum_select``). The robust rules ignore sample counts."""
    trim_ratio: float = 0.1
    """trimmed_mean: share beta of the values dropped at each end, per coordinate (in [0, 0.5))."""
    krum_byzantine: int = 1
    """krum: f, the number of malicious updates it must tolerate (needs clients per round >= f + 3)."""
    krum_select: int = 1
    """krum: 1 = Krum (the single best update); m > 1 = multi-Krum (mean of the m best)."""
    clip_update_norm: float = 0.0
    """Norm clipping defence: scale every update delta down to this L2 norm before aggregating (0 = off)."""
    clip_to_median: bool = False
    """Norm clipping defence with no tuning: clip every update delta to the round's median delta norm."""
    max_update_norm: float = 10.0
    """Validation: reject an update whose delta norm exceeds this many times the global parameters'
    norm (floored at 1); 0 = no norm check. Generous: honest deltas are a small fraction of it."""

    RANGES: ClassVar[dict[str, str]] = {
        "trim_ratio": "[0, 0.5)", "krum_byzantine": ">= 0", "krum_select": ">= 1", "clip_update_norm": ">= 0",
        "max_update_norm": ">= 0",
    }
