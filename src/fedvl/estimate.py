"""A rough time per round, from the config alone, so an implausible run is named before it starts.

The cost model is the exchange family's (:meth:`fedvl.rounds.family.Family.round_seconds`): the
parameter family's is measured (:mod:`fedvl.finetune.estimate`); the knowledge family has none.
"""

from __future__ import annotations

from fedvl.schema import ExperimentConfig

WARN_S = 3600.0


def round_seconds(cfg: ExperimentConfig) -> tuple[float, str] | None:
    """(estimated seconds per round, what it is made of), or None when it cannot be told up front."""
    from fedvl.rounds.family import family_of

    return family_of(cfg.algorithm.name).round_seconds(cfg)


def plausibility_warning(cfg: ExperimentConfig) -> str | None:
    """One line when a round would take over an hour (else None)."""
    est = round_seconds(cfg)
    if est is None or est[0] <= WARN_S:
        return None
    seconds, parts = est
    return (f"fedvl: warning: this run needs about {seconds / 3600:.1f} h per round ({parts}; model "
            f"{cfg.model.name}), about {seconds * cfg.algorithm.rounds / 3600:.0f} h for {cfg.algorithm.rounds} "
            "rounds; fewer clients (data.num_clients, algorithm.fraction_fit, run.eval_clients) or "
            "algorithm.local_steps make it shorter")
