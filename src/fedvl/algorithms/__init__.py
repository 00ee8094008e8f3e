"""Algorithm registry. Importing this package registers every algorithm once."""

from fedvl.algorithms import centralized, fedavg, feddat, fedprox, local  # noqa: F401  (registration)
from fedvl.algorithms.base import Algorithm, registry


def available_algorithms() -> list[str]:
    """Every runnable algorithm: the fine-tuning family and the knowledge-transfer family (FedMMKT)."""
    from fedvl.algorithms.fedmmkt import KT_ALGORITHMS

    return sorted([*registry(), *KT_ALGORITHMS])


def get_algorithm(name: str) -> Algorithm:
    try:
        return registry()[name]
    except KeyError:
        from fedvl.algorithms.fedmmkt import KT_ALGORITHMS

        if name in KT_ALGORITHMS:
            raise KeyError(f"'{name}' is a knowledge-transfer algorithm (fedvl.runtime.kt), not a fine-tuning one") \
                from None
        raise KeyError(f"unknown algorithm '{name}' (available: {', '.join(available_algorithms())})") from None
