"""Local-only training: no communication; each client trains its own copy of
every trainable parameter. The lower reference of every FL table: a federated
method that does not beat it has not helped that client."""

from __future__ import annotations

from fedvl.algorithms.aggregate import Params
from fedvl.algorithms.base import Algorithm, ClientUpdate, FitResult, ServerRule, register


class NoAggregation(ServerRule):
    custom_aggregate = True

    def aggregate(self, rnd: int, global_params: Params, results: list[FitResult]) -> Params:
        return global_params  # nothing travels, nothing to average


ALGORITHM = register(Algorithm(
    name="local",
    server=NoAggregation,
    client=ClientUpdate,
    summary="each client trains alone (no communication)",
    local_groups=frozenset({"*"}),
))
