"""The knowledge exchange in Flower records (this family's :meth:`fedvl.rounds.family.Family.codec`):
a :class:`KTDown` down; training metrics, and logits and prototypes on the synthetic set (or weights)
up; before evaluation, each architecture's averaged weights (kt-fedavg) down. Tensors travel in their
own dtype (``fedvl.transport.wire``)."""

from __future__ import annotations

from typing import Any

from fedvl.transport.flower_env import FLOWER_ENV  # noqa: F401  (first: before flwr is imported)

# isort: split
from flwr.app import ConfigRecord, RecordDict

from fedvl.algorithms.aggregate import Params
from fedvl.fedmmkt.algorithms import DistillSet
from fedvl.fedmmkt.data import ImageTextSet
from fedvl.fedmmkt.exchange import KTDown
from fedvl.transport.wire import from_record, metrics_record, to_record


class KnowledgeCodec:
    """The knowledge exchange (see the module docstring)."""

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
        out: dict[str, Any] = {"train": metrics_record(r["train"])}
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
