"""Algorithm registry: every algorithm, the FedMMKT family included, in one. Importing this
package registers each one once."""

from fedvl.algorithms import centralized, fedavg, feddat, fedprox, local  # noqa: F401  (registration)
from fedvl.algorithms.base import Algorithm, registry
from fedvl.fedmmkt import algorithms as _fedmmkt  # noqa: F401  (registration: the family lives in its own folder)


def available_algorithms() -> list[str]:
    return sorted(registry())


def get_algorithm(name: str) -> Algorithm:
    try:
        return registry()[name]
    except KeyError:
        raise KeyError(f"unknown algorithm '{name}' (available: {', '.join(available_algorithms())})") from None
