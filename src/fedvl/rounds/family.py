"""An exchange family: what travels in a round, and every part a run of it is made of.

Two families exist, each registered where its code lives: the parameter family
(:mod:`fedvl.finetune.family`: FedAvg, FedProx, FedDAT, local, centralized; the global travelling
parameters go down, trained ones come back) and the knowledge family (:mod:`fedvl.fedmmkt.family`:
FedMMKT and its baselines; a synthetic set goes down, logits and prototypes come back). An
algorithm names its family (``Algorithm.family``); :func:`family_of` gives the object, and every
part of a run that differs between the families is a call on it, never a test of its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedvl.schema import ExperimentConfig

DEFAULT = "parameters"
"""The family of a name no algorithm has (left to the config checks, which name the algorithms)."""


@dataclass
class Finished:
    """A run whose rounds are done, for its family to summarise (:meth:`Family.report`)."""

    cfg: ExperimentConfig
    fed: Any
    server: Any
    """The round's server side (the knowledge family reads the generator's sample grids from it)."""
    history: Any
    final: dict[str, Any]
    run_dir: Path
    wall_s: float
    setup_s: float
    started_unix: float
    first_step_unix: float | None


class Family(Protocol):
    """The parts of a run that an exchange family provides. The round itself
    (:func:`fedvl.rounds.loop.run_rounds`), the runtime choice
    (:func:`fedvl.transport.inprocess.runner_for`), the resume path
    (:func:`fedvl.rounds.checkpoint.resume_from`) and the results files
    (:func:`fedvl.experiment.run_experiment`) are written once for both."""

    name: str
    sections: frozenset[str]
    """The config sections a run of this family reads (its ``config.yaml`` holds these)."""

    def check(self, cfg: ExperimentConfig) -> None:
        """The family's own config checks (raise ConfigError), after the algorithm's own."""
        ...

    def round_seconds(self, cfg: ExperimentConfig) -> tuple[float, str] | None:
        """A rough time per round and what it is made of (None: not told up front)."""
        ...

    def benchmark(self, config: Callable[[], ExperimentConfig]) -> str:
        """What the runs are measured on, in folder names (``config`` loads the config, called only
        where the family's benchmark is read from it)."""
        ...

    def comparison_title(self, cfg: ExperimentConfig) -> str:
        """The benchmark as a comparison's title names it."""
        ...

    def build(self, cfg: ExperimentConfig, run_dir: Path, progress, clients: list[int] | None) -> Any:
        """The run's federation on its server: every client's data, or ``clients``' only (``[]``:
        none, where the clients are other processes)."""
        ...

    def build_node(self, cfg: ExperimentConfig, clients: list[int] | None) -> Any:
        """A node's federation: the data of its partitions ``clients`` (None: every one), no server parts."""
        ...

    def server(self, fed: Any, run_dir: Path | None, config_digest: str | None) -> Any:
        """The round's server side (a :class:`fedvl.rounds.loop.RoundServer`), checkpointing into
        ``run_dir`` where one is given."""
        ...

    def node(self, fed: Any, store: Any) -> Any:
        """The client side (a :class:`fedvl.rounds.loop.Node`) of the clients ``fed`` holds, keeping
        their state in ``store``."""
        ...

    def codec(self) -> Any:
        """What puts this family's messages into Flower records and back (in the family's folder, built of
        :mod:`fedvl.transport.wire`'s records)."""
        ...

    def report(self, run: Finished) -> tuple[str, list[str], dict[str, Any]]:
        """(title, notes, summary) of a finished run; writes the family's own plots into its folder."""
        ...


_REGISTRY: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _REGISTRY:
        raise ValueError(f"exchange family {family.name!r} registered twice")
    _REGISTRY[family.name] = family
    return family


def families() -> dict[str, Family]:
    # each family registers in its own module (light at import: its parts are imported when used)
    import fedvl.fedmmkt.family  # noqa: F401
    import fedvl.finetune.family  # noqa: F401

    return _REGISTRY


def get_family(name: str) -> Family:
    try:
        return families()[name]
    except KeyError:
        raise KeyError(f"unknown exchange family {name!r} (registered: {', '.join(sorted(families()))})") from None


def family_of(name: str) -> Family:
    """The family of an algorithm, or of a compare method such as ``fedavg-lora``."""
    from fedvl.algorithms import registry

    algo = registry().get(name) or registry().get(name.partition("-")[0])
    return get_family(algo.family if algo is not None else DEFAULT)
