"""Privacy accounting for client-level differential privacy (DP-FedAvg).

McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018, https://arxiv.org/abs/1710.06963: every round the server clips each
sampled client's update delta to L2 norm S and adds Gaussian noise of std z·S
to their sum (``aggregate.dp_mean``). One round is one step of the sampled
Gaussian mechanism with sampling rate q = the share of clients sampled per
round (``algorithm.fraction_fit``, rounded to whole clients as the strategy does); the
privacy spent after T rounds is read from opacus's RDP accountant. The
accountant assumes Poisson sampling of clients, the usual approximation for
the fixed-size sampling we do (as in the paper).
"""

from __future__ import annotations

from fedvl.schema import ConfigError


def epsilon_spent(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """epsilon at ``delta`` after ``rounds`` rounds (0.0 before the first round).

    Recomputed from the round number rather than carried as state, so a resumed run
    reports exactly what an uninterrupted one does."""
    from opacus.accountants import RDPAccountant  # late: opacus is only needed with privacy on

    if rounds <= 0:
        return 0.0
    acc = RDPAccountant()
    for _ in range(rounds):
        acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(acc.get_epsilon(delta))


def check_options(cfg) -> None:
    """The ``privacy`` section (DP-FedAvg), run when a config loads."""
    a, dp = cfg.algorithm, cfg.privacy
    if dp.enabled:
        if a.aggregator != "mean" or a.aggregation != "uniform":
            raise ConfigError("privacy.enabled needs algorithm.aggregator=mean and algorithm.aggregation=uniform "
                              "(DP-FedAvg's noise is calibrated to a uniform mean of clipped updates)")
        if a.clip_update_norm > 0 or a.clip_to_median:
            raise ConfigError("privacy.enabled clips with privacy.clip_norm; unset algorithm.clip_update_norm / "
                              "clip_to_median")
