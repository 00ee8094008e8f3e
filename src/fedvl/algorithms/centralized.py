"""Centralized training: all clients' training data pooled in one place, one
model, evaluated on each client's own test split. The upper reference of every
FL table (it ignores privacy)."""

from fedvl.algorithms.base import Algorithm, ClientUpdate, ServerRule, register

ALGORITHM = register(Algorithm(
    name="centralized",
    server=ServerRule,
    client=ClientUpdate,
    summary="one model trained on the pooled data (upper bound)",
    pooled=True,
))
