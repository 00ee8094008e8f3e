"""The parameter exchange in Flower records (this family's :meth:`fedvl.rounds.family.Family.codec`):
global parameters down, a :class:`FitResult` up, each tensor in its own dtype (``fedvl.transport.wire``)."""

from __future__ import annotations

from typing import Any

from fedvl.transport.flower_env import FLOWER_ENV  # noqa: F401  (first: before flwr is imported)

# isort: split
from flwr.app import MetricRecord, RecordDict

from fedvl.algorithms.aggregate import Params
from fedvl.algorithms.base import FitResult
from fedvl.transport.wire import from_record, to_record


class ParameterCodec:
    """The parameter exchange: global parameters down, a :class:`FitResult` up."""

    def down(self, params: Params) -> dict[str, Any]:
        return {"params": to_record(params)}

    def read_down(self, content: RecordDict) -> Params:
        return from_record(content["params"])

    def reply(self, res: FitResult) -> dict[str, Any]:
        metrics = {k: float(v) for k, v in res.metrics.items()}
        metrics["num-examples"] = res.num_examples
        return {"params": to_record(res.params), "metrics": MetricRecord(metrics)}

    def read_reply(self, content: RecordDict) -> FitResult:
        m = dict(content["metrics"])
        n = m.pop("num-examples")
        return FitResult(from_record(content["params"]), int(n), m)

    eval_down = down
    read_eval_down = read_down
