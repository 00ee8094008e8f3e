"""Algorithm registry. Importing this package registers every algorithm once."""

from fedvl.algorithms import centralized, fedavg, feddat, fedprox, local  # noqa: F401  (registration)
from fedvl.algorithms.base import Algorithm, registry


def available_algorithms() -> list[str]:
    return sorted(registry())


def get_algorithm(name: str) -> Algorithm:
    try:
        return registry()[name]
    except KeyError:
        raise KeyError(f"unknown algorithm '{name}' (available: {', '.join(available_algorithms())})") from None
