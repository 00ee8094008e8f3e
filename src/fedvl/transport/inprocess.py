"""In-process simulator: clients run one after another in one process.

One model instance serves every client: before a client runs, the runtime
loads the global travelling parameters and that client's own local state
(from disk) into it. Memory therefore does not grow with the number of
clients. Randomness is derived from (seed, round, client), so a run is
deterministic and every round sees a new batch order.

:func:`runner_for` is the runtime choice of every run (in process, or Flower's simulation), for
either exchange family (:mod:`fedvl.rounds.family`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fedvl.algorithms.aggregate import Params
from fedvl.finetune.federation import Federation, build_federation, to_wire, transport_dtype  # noqa: F401  (read from here too)
from fedvl.rounds.loop import InProcess, play_round, run_rounds
from fedvl.finetune.exchange import (  # noqa: F401  (the parameter exchange's halves, read from here too)
    ParameterNode,
    ParameterServer,
    add_eval,
    check_result,
    client_evaluate,
    client_fit,
    eval_client_ids,
    evaluate_all,
    load_client,
    sample_round,
    server_aggregate,
    wants_eval,
)
from fedvl.rounds.family import family_of
from fedvl.rounds.state import ClientStateStore
from fedvl.schema import ExperimentConfig
from fedvl.seeding import derived_seed  # noqa: F401


def run_round(fed: Federation, store: ClientStateStore, rnd: int, global_params: Params,
              progress=None) -> tuple[Params, dict[str, Any]]:
    """One round in process (:func:`fedvl.rounds.loop.play_round`), without checkpointing:
    returns the new global parameters and the round's record."""
    server = ParameterServer(fed, global_params=global_params)
    record = play_round(server, InProcess(ParameterNode(fed, store)), rnd, progress)
    return server.global_params, record


def runner_for(cfg: ExperimentConfig, runner=None):
    """The one runtime choice, for every exchange family: ``runner`` where the caller has one (a
    Flower deployment's grid), Flower's simulation for ``run.runtime=flower-sim``, else
    :func:`in_process`. A runner is called ``runner(fed, run_dir, history, progress, server, start)``
    and returns the last round's record."""
    if runner is not None:
        return runner
    if cfg.run.runtime == "flower-sim":  # the same server side; Flower's grid reaches the clients
        from fedvl.transport.flower import flower_simulate

        return flower_simulate
    return in_process


def in_process(fed, run_dir: Path, history, progress, server, start: int = 1) -> dict[str, Any]:
    """Rounds ``start``.. in this process, the clients one after another, their state in the run
    folder's ``client_states``; ``server``: the round's server side
    (:meth:`fedvl.rounds.family.Family.server`)."""
    family = family_of(fed.cfg.algorithm.name)
    node = family.node(fed, ClientStateStore(run_dir / "client_states"))
    return run_rounds(server, InProcess(node), history, progress, start)


def simulate(fed, run_dir: Path, history, progress=None, resume: bool = False,
             warn=lambda msg: print(msg, file=sys.stderr), config_digest: str | None = None) -> dict[str, Any]:
    """Run every round in process, committing a checkpoint after each (``runtime.checkpoint``), for
    either exchange family's federation.

    ``resume=True`` continues from the newest good checkpoint in ``run_dir``
    (damaged ones are reported with ``warn`` and skipped), puts the clients'
    states and the round records of that round back, and runs the rest; with
    the same config the result is the same as an uninterrupted run. ``config_digest``
    is recorded in every checkpoint, so a resume can tell an edited config."""
    server = family_of(fed.cfg.algorithm.name).server(fed, run_dir, config_digest)
    start = server.resume(history, warn) if resume else 1
    return in_process(fed, run_dir, history, progress, server, start)
