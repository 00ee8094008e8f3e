"""The round loop, written once for every algorithm and every runtime.

A round: sample -> configure (what goes down) -> fit (the transport reaches the clients)
-> validate and aggregate -> evaluate -> record -> checkpoint -> report. Two parties fill it in:

* a :class:`RoundServer`, the server side of an exchange: :class:`fedvl.finetune.exchange.ParameterServer`
  (global travelling parameters down, trained parameters up: the fine-tuning family) or
  :class:`fedvl.fedmmkt.exchange.KnowledgeServer` (a synthetic set down, logits and prototypes up:
  the FedMMKT family). Which one an algorithm uses is its exchange family's
  (:meth:`fedvl.rounds.family.Family.server`), never its name;
* a :class:`Transport`, which only carries messages to the clients and their replies back:
  :class:`InProcess` here, or Flower's grid (:mod:`fedvl.transport.flower`).

Randomness is derived from (seed, purpose, round, client) on both sides, so a transport does
not change a number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol


class RoundServer(Protocol):
    """The server side of one exchange. ``replies`` and ``scores`` are keyed by client id."""

    rounds: int

    def sample(self, rnd: int) -> list[str]: ...

    def configure_fit(self, rnd: int, sampled: list[str], progress) -> Any: ...

    def aggregate_fit(self, rnd: int, sampled: list[str], replies: Any, failed: dict[str, str],
                      progress) -> dict[str, Any]: ...

    def eval_targets(self, rnd: int) -> list[str]:
        """The clients to evaluate after round ``rnd`` (none: no evaluation this round)."""
        ...

    def configure_evaluate(self, rnd: int) -> Any: ...

    def aggregate_evaluate(self, rnd: int, record: dict[str, Any], scores: dict[str, dict[str, float]],
                           failed: dict[str, str], progress) -> None: ...

    def commit(self, rnd: int, history) -> None:
        """Checkpoint the round (after its record is in ``history``), if this server keeps checkpoints."""
        ...


class Transport(Protocol):
    """Reaches the clients: returns (replies by client, reasons of the clients that failed)."""

    def fit(self, rnd: int, cids: list[str], down: Any, progress) -> tuple[Any, dict[str, str]]: ...

    def evaluate(self, rnd: int, cids: list[str], down: Any,
                 progress) -> tuple[dict[str, dict[str, float]], dict[str, str]]: ...


class Node(Protocol):
    """The client side of one exchange, for the clients this process holds."""

    def fit(self, cid: str, rnd: int, down: Any, on_step: Callable | None) -> Any: ...

    def evaluate(self, cid: str, rnd: int, down: Any) -> dict[str, float]: ...

    def holds(self, cid: str) -> bool: ...


class InProcess:
    """The in-process simulator's transport: every client runs here, one after another, on
    the one model instance its node holds."""

    def __init__(self, node: Node):
        self.node = node

    def fit(self, rnd: int, cids: list[str], down: Any, progress) -> tuple[dict[str, Any], dict[str, str]]:
        replies = {}
        for i, cid in enumerate(cids, 1):
            if progress:
                progress.client_start(rnd, cid, i, len(cids))
            replies[cid] = self.node.fit(cid, rnd, down, progress.step if progress else None)
        return replies, {}

    def evaluate(self, rnd: int, cids: list[str], down: Any,
                 progress) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        return {cid: self.node.evaluate(cid, rnd, down) for cid in cids if self.node.holds(cid)}, {}


def play_round(server: RoundServer, transport: Transport, rnd: int, progress=None) -> dict[str, Any]:
    """One round, up to its record: sample, configure, fit, validate and aggregate, evaluate."""
    t0 = time.perf_counter()
    sampled = server.sample(rnd)
    replies, failed = transport.fit(rnd, sampled, server.configure_fit(rnd, sampled, progress), progress)
    if progress:
        progress.phase(f"round {rnd} · aggregating {len(replies)} update(s)")
    record = server.aggregate_fit(rnd, sampled, replies, failed, progress)
    targets = server.eval_targets(rnd)
    if targets:
        if progress:
            progress.phase(f"round {rnd} · evaluating {len(targets)} client(s)")
        scores, eval_failed = transport.evaluate(rnd, targets, server.configure_evaluate(rnd), progress)
        server.aggregate_evaluate(rnd, record, scores, eval_failed, progress)
    record["time_s"] = time.perf_counter() - t0
    return record


def run_rounds(server: RoundServer, transport: Transport, history, progress=None, start: int = 1) -> dict[str, Any]:
    """Rounds ``start`` .. ``server.rounds``, each recorded, checkpointed and reported; returns the
    last round's record (a resumed run with nothing left returns the last record it had)."""
    record: dict[str, Any] = history.rounds[-1] if start > 1 and history.rounds else {}
    for rnd in range(start, server.rounds + 1):
        record = play_round(server, transport, rnd, progress)
        history.append(record)  # before the commit: a resume truncates metrics.jsonl to the checkpoint's records
        server.commit(rnd, history)
        if progress and "eval" in record:
            progress.round_end(record)
    return record
