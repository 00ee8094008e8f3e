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

import json
from typing import Any

from fedvl.transport.flower_env import FLOWER_ENV  # noqa: F401  (first: before flwr is imported)

# isort: split
import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedvl.algorithms.aggregate import Params

# A record holds every tensor in one byte buffer ("data") and a JSON index of names, dtypes and shapes
# ("index"). Flower makes each Array an object of its own (and each 5 MB of it another), and a node or
# the server fetches every object with a request of its own, two at a time on a 2-core machine: one
# Array per tensor cost a deployed round of the tiny model about 0.5 s per message (its ~40 tensors).
INDEX, DATA = "index", "data"


def to_record(params: Params) -> ArrayRecord:
    index, parts = [], []
    for name, t in params.items():
        t = t.detach().to("cpu").contiguous()
        index.append([name, str(t.dtype).removeprefix("torch."), list(t.shape)])
        parts.append(t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8))
    data = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
    head = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
    return ArrayRecord({INDEX: Array.from_numpy_ndarray(head), DATA: Array.from_numpy_ndarray(data.numpy())})


def from_record(record: ArrayRecord) -> Params:
    """The tensors of :func:`to_record` (copies). A missing or extra key, a wrong shape or dtype is
    left for the server's checks to reject; a record that is not one of ours raises ValueError."""
    if set(record.keys()) != {INDEX, DATA}:
        raise ValueError(f"not a fedvl tensor record (keys {sorted(record.keys())[:4]})")
    try:
        index = json.loads(record[INDEX].numpy().tobytes())
        data = torch.from_numpy(record[DATA].numpy())
        out, at = {}, 0
        for name, dtype, shape in index:
            dt = getattr(torch, dtype)
            if not isinstance(dt, torch.dtype):
                raise ValueError(f"unknown dtype {dtype!r}")
            size = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dt).element_size()
            if at + size > data.numel() or any(int(d) < 0 for d in shape):
                raise ValueError(f"tensor {name!r} runs past the record's data")
            out[str(name)] = data[at:at + size].clone().view(dt).reshape([int(d) for d in shape])
            at += size
    except (TypeError, AttributeError, json.JSONDecodeError, RuntimeError) as e:
        raise ValueError(f"malformed tensor record: {type(e).__name__}: {e}") from None
    if at != data.numel():
        raise ValueError("malformed tensor record: data left over after the last tensor")
    return out


def metrics_record(values: dict[str, Any]) -> MetricRecord:
    return MetricRecord({k: v if isinstance(v, int) and not isinstance(v, bool) else float(v)
                         for k, v in values.items()})


def scores_record(scores: dict[str, float]) -> dict[str, Any]:
    return {"metrics": metrics_record(scores)}  # counts stay integers, as in process


def read_scores(content: RecordDict) -> dict[str, float]:
    return dict(content["metrics"])
