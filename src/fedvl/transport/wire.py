"""Flower records for what the exchanges send: the pieces every family's codec is made of.

A codec (each exchange family's :meth:`fedvl.rounds.family.Family.codec`, kept in the family's folder:
:mod:`fedvl.finetune.codec`, :mod:`fedvl.fedmmkt.codec`) turns what :mod:`fedvl.rounds.loop` hands a
transport (what goes down) and what a node returns (what comes back) into Flower records and back,
exactly: tensors travel as arrays of their own dtype (:func:`to_record`), so a Flower run gives the
in-process numbers bit for bit. A malformed reply raises KeyError, TypeError or ValueError, which the
transport records as the client's failure. The evaluation scores are the same for every family
(:func:`scores_record`).
"""

from __future__ import annotations

from typing import Any

from fedvl.transport.flower_env import FLOWER_ENV  # noqa: F401  (first: before flwr is imported)

# isort: split
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fedvl.algorithms.aggregate import Params


def to_record(params: Params) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict(dict(params))


def from_record(record: ArrayRecord) -> Params:
    # a missing or extra key, a wrong shape or dtype is left for the server's checks to reject
    return {k: t.clone() for k, t in record.to_torch_state_dict().items()}


def metrics_record(values: dict[str, Any]) -> MetricRecord:
    return MetricRecord({k: v if isinstance(v, int) and not isinstance(v, bool) else float(v)
                         for k, v in values.items()})


def scores_record(scores: dict[str, float]) -> dict[str, Any]:
    return {"metrics": metrics_record(scores)}  # counts stay integers, as in process


def read_scores(content: RecordDict) -> dict[str, float]:
    return dict(content["metrics"])
