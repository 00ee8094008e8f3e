"""The server optimizer's options (read by :mod:`fedvl.algorithms.server_opt`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass
class ServerOptOptions:
    server_opt: Literal["none", "fedavgm", "fedadam"] = "none"
    """Parameter exchange only: the server's optimizer, which treats Δ = aggregate - global as a
    pseudo-gradient (Reddi et al. 2021, https://arxiv.org/abs/2003.00295). none: the aggregate is the
    new global model (FedAvg); fedavgm: server momentum, m = momentum·m + Δ, x += server_lr·m;
    fedadam: x += server_lr·m / (sqrt(v) + server_tau) with Adam's moments of Δ. The pooled reference
    (centralized) and local training have no server step and ignore it."""
    server_lr: float = 1.0
    """Server learning rate η (fedavgm, fedadam). FedAdam's step is about η per coordinate, so it wants
    a far smaller η than FedAvgM (Reddi et al. tune it in 10^-3..10^0)."""
    server_momentum: float = 0.9
    """fedavgm: the momentum β; fedadam: β1, the decay of the first moment."""
    server_beta2: float = 0.99
    """fedadam: β2, the decay of the second moment."""
    server_tau: float = 1e-3
    """fedadam: τ, the adaptivity floor added to sqrt(v) (the second moment starts at τ²)."""

    RANGES: ClassVar[dict[str, str]] = {
        "server_lr": "> 0", "server_momentum": "[0, 1)", "server_beta2": "[0, 1)", "server_tau": "> 0",
    }
