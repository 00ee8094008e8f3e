"""Centralized training: all clients' training data pooled in one place, one
model, evaluated on each client's own test split. The upper reference of every
FL table (it ignores privacy)."""

from fedvl.algorithms.base import Algorithm, ClientUpdate, ServerRule, register
from fedvl.schema import ConfigError


def check_options(cfg) -> None:
    """Pooling all data is a reference point of the simulator, not something a federation can do."""
    if cfg.run.runtime != "simulator":
        raise ConfigError(f"algorithm {cfg.algorithm.name} pools every client's data in one place, which a "
                          f"federation cannot do; use run.runtime=simulator for this reference")
    if cfg.data.benchmark == "task":  # each task's labels index its own label list: they cannot be pooled
        raise ConfigError(
            f"algorithm {cfg.algorithm.name} pools all clients' data, which is undefined on data.benchmark=task "
            "(every client has its own task and label space); use fedavg, fedprox, feddat or local"
        )


ALGORITHM = register(Algorithm(
    name="centralized",
    server=ServerRule,
    client=ClientUpdate,
    summary="one model trained on the pooled data (upper bound)",
    pooled=True,
    check=check_options,
))
