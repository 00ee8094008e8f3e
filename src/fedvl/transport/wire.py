"""What each exchange puts in a Flower message and reads back out of one (each exchange family's
:meth:`fedvl.rounds.family.Family.codec`).

A codec turns what :mod:`fedvl.rounds.loop` hands a transport (what goes down) and what a node
returns (what comes back) into Flower records and back, exactly: tensors travel as arrays of
their own dtype, so a Flower run gives the in-process numbers bit for bit. A malformed reply
raises KeyError, TypeError or ValueError, which the transport records as the client's failure.
"""

from __future__ import annotations

from typing import Any

from fedvl.transport.flower_env import FLOWER_ENV  # noqa: F401  (first: before flwr is imported)

# isort: split
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedvl.algorithms.aggregate import Params
from fedvl.algorithms.base import FitResult
from fedvl.fedmmkt.algorithms import DistillSet
from fedvl.fedmmkt.data import ImageTextSet
from fedvl.fedmmkt.exchange import KTDown


def to_record(params: Params) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict(dict(params))


def from_record(record: ArrayRecord) -> Params:
    # a missing or extra key, a wrong shape or dtype is left for the server's checks to reject
    return {k: t.clone() for k, t in record.to_torch_state_dict().items()}


def _metrics(values: dict[str, Any]) -> MetricRecord:
    return MetricRecord({k: v if isinstance(v, int) and not isinstance(v, bool) else float(v)
                         for k, v in values.items()})


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


class KnowledgeCodec:
    """The knowledge exchange: a :class:`KTDown` down; training metrics, and logits and prototypes
    on the synthetic set (or weights) up; before evaluation, each architecture's averaged weights
    (kt-fedavg) down."""

    def down(self, d: KTDown) -> dict[str, Any]:
        out: dict[str, Any] = {"kt": ConfigRecord({"send-weights": d.send_weights})}
        if d.synthetic is not None:
            out["synthetic"] = to_record({"images": d.synthetic.images, "labels": d.synthetic.labels})
        if d.distill is not None:
            out["distill"] = to_record(d.distill.tensors())
        if d.protos is not None:
            out["protos"] = to_record({"protos": d.protos})
        return out

    def read_down(self, content: RecordDict) -> KTDown:
        syn = from_record(content["synthetic"]) if "synthetic" in content else None
        dis = from_record(content["distill"]) if "distill" in content else None
        return KTDown(ImageTextSet(syn["images"], syn["labels"], []) if syn is not None else None,
                      DistillSet.from_tensors(dis) if dis is not None else None,
                      from_record(content["protos"])["protos"] if "protos" in content else None,
                      bool(content["kt"]["send-weights"]))

    def reply(self, r: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"train": _metrics(r["train"])}
        for key in ("report", "weights"):
            if key in r:
                out[key] = to_record(r[key])
        if "num_examples" in r:  # beside the weights: its weight in the average, not a training metric
            out["count"] = ConfigRecord({"num-examples": int(r["num_examples"])})
        return out

    def read_reply(self, content: RecordDict) -> dict[str, Any]:
        r: dict[str, Any] = {"train": dict(content["train"])}
        for key in ("report", "weights"):
            if key in content:
                r[key] = from_record(content[key])
        if "weights" in r:
            n = content["count"]["num-examples"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"num-examples must be a positive integer, got {n!r}")
            r["num_examples"] = n
        return r

    def eval_down(self, averaged: dict[str, Params] | None) -> dict[str, Any]:
        return {f"avg.{arch}": to_record(state) for arch, state in (averaged or {}).items()}

    def read_eval_down(self, content: RecordDict) -> dict[str, Params] | None:
        avg = {k[len("avg."):]: from_record(v) for k, v in content.items() if k.startswith("avg.")}
        return avg or None


def scores_record(scores: dict[str, float]) -> dict[str, Any]:
    return {"metrics": _metrics(scores)}  # counts stay integers, as in process


def read_scores(content: RecordDict) -> dict[str, float]:
    return dict(content["metrics"])

