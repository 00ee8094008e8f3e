"""``flower-supernode`` as ``fedvl join`` runs it: Flower's own SuperNode, polling faster.

A SuperNode (flwr 1.42) that finds no message waits 3 s before it asks the SuperLink again, and
waits for its ClientApp's reply in 0.5 s steps. On a short round those waits are most of the
time a deployment takes: a node answers a round's train message, finds nothing (the server is
still aggregating), and sleeps 3 s before it sees the evaluate message. Flower has no option for
either wait, so this entry point caps the sleeps of the SuperNode's message loop
(``flwr.supernode.start_client_internal``, whose only sleeps are those three): the wait for the
next message (a request to the SuperLink) at ``FEDVL_NODE_POLL_S`` seconds (``fedvl join
--poll-s``), the two waits for the local reply (a look at the node's own memory) at
``LOCAL_WAIT_S``; it also cuts Flower's 1 s back-off on contents not stored yet
(:func:`fedvl.deploy.flower_pins.cut_pull_backoff`) and caps its reconnection waits at
``RECONNECT_MAX_S``, then runs Flower's SuperNode unchanged.
``tests/deploy/test_flower_pins.py`` checks that the loop still sleeps where this expects, so a
Flower upgrade that moves them fails a test instead of silently going back to 3 s.

    python -m fedvl.deploy.supernode [flower-supernode options]
"""

from __future__ import annotations

import os
import sys
import time

from fedvl.transport import flower_env  # noqa: F401  (first: before flwr is imported)

POLL_ENV = "FEDVL_NODE_POLL_S"
DEFAULT_POLL_S = 0.2  # 5 requests a second from an idle node: nothing on a LAN, fine for tens of nodes
LOCAL_WAIT_S = 0.02  # the reply waits look at the node's own memory: cheap to do often
IDLE_SLEEP_S = 3  # the loop's one network wait (no message yet); its other sleeps (0.5 s) are local
# a SuperNode whose SuperLink went away retries at random waits up to this (Flower: doubling up to 20 s),
# so it finds a restarted server (`fedvl serve --resume`, the next run on the same port) within a second
RECONNECT_MAX_S = 1.0
# after handling a message a node looks for the next one BUSY_DIVISOR times as often, for BUSY_S seconds
BUSY_S, BUSY_DIVISOR = 1.0, 4


class CappedSleep:
    """The ``time`` module, except that ``sleep`` waits at most ``cap`` seconds for the loop's network
    wait (``IDLE_SLEEP_S``) and at most ``local_cap`` for its local ones. For ``BUSY_S`` after a local
    wait (the node has just handled a message: the next one of the round is likely near) the network
    wait is ``cap / BUSY_DIVISOR``: a deployed round's next message is found a few tens of ms after it
    is sent instead of half a poll later on average, and an idle node still asks only every ``cap``."""

    def __init__(self, cap: float, local_cap: float = LOCAL_WAIT_S, clock=time.monotonic):
        self.cap, self.local_cap, self.clock = cap, local_cap, clock
        self.busy_until = float("-inf")

    def sleep(self, seconds: float) -> None:
        if seconds >= IDLE_SLEEP_S:
            time.sleep(min(seconds, self.cap / BUSY_DIVISOR if self.clock() < self.busy_until else self.cap))
        else:
            self.busy_until = self.clock() + BUSY_S
            time.sleep(min(seconds, self.local_cap))

    def __getattr__(self, name: str):
        return getattr(time, name)


def main() -> None:
    import flwr.supercore.retry.http_retry as http_retry
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    from fedvl.deploy.flower_pins import cut_pull_backoff

    cut_pull_backoff()
    loop.time = CappedSleep(float(os.environ.get(POLL_ENV, DEFAULT_POLL_S)))
    http_retry.MAX_RETRY_DELAY = RECONNECT_MAX_S
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
