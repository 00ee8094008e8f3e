"""A deployed node's warm worker: one process per ``fedvl join`` that stays alive across messages.

Flower (1.42) starts a fresh ``flwr-clientapp`` process for every message a SuperNode receives
and offers no long-running ClientApp. Importing torch and fedvl and building the model and the
partition's data cost several seconds in each of those processes (docs/performance.md, figure 6:
a localhost deployment took about 12x the in-process run). So the ClientApp a deployment loads
(:mod:`fedvl.deploy.node_app`) is thin: it imports only Flower and hands each message, with its
Context, to this worker over a Unix socket and returns the worker's reply. The worker runs the
same ClientApp as the Flower simulation (:func:`fedvl.transport.flower.make_client_app`), so the
model, the partition's data and the encoded features stay in memory from one round to the next;
client-local state still goes to the node's state folder after every message, so a worker that
ends loses none of it.

The socket and its key live in a private folder (mode 0700) that only the node's user can read;
``multiprocessing.connection`` authenticates every connection with that key (HMAC challenge), so
another local user cannot hand the worker a message. The folder reaches the ClientApp through
the node config (``WORKER_KEY``), which never leaves the node.

    python -m fedvl.deploy.node_worker FOLDER   (started and stopped by ``fedvl join``)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener
from pathlib import Path

WORKER_KEY = "fedvl-worker"  # node_config key: the folder holding this node's worker socket and key
SOCKET, KEY = "worker.sock", "key"


class NodeWorkerError(RuntimeError):
    """The worker could not be reached, or its ClientApp raised; the message says which."""


def make_folder(prefix: str = "fedvl-node-") -> Path:
    """A private folder with a fresh key; short, because a Unix socket path must fit in 108 bytes."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))  # mkdtemp makes it 0700
    key = folder / KEY
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    return folder


def _send_pair(conn, message, context) -> None:
    """A Message and its Context, in Flower's own protobuf form (both directions use this)."""
    from flwr.common import serde

    conn.send_bytes(serde.message_to_proto(message).SerializeToString())
    conn.send_bytes(serde.context_to_proto(context).SerializeToString())


def _recv_pair(conn):
    from flwr.common import serde
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    message = serde.message_from_proto(ProtoMessage.FromString(conn.recv_bytes()))
    return message, serde.context_from_proto(ProtoContext.FromString(conn.recv_bytes()))


def _answer(conn, app) -> None:
    """One request: run the ClientApp, send back its reply and the Context, or the error's name and text."""
    try:
        message, context = _recv_pair(conn)
    except (OSError, EOFError, ValueError) as e:
        print(f"fedvl node worker: unreadable request ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
        return
    try:
        reply = app(message=message, context=context)
    except Exception as e:  # noqa: BLE001  (any ClientApp error goes back to the message's sender)
        traceback.print_exc()
        for part in (b"error", type(e).__name__.encode(), str(e).encode()):
            conn.send_bytes(part)
        return
    conn.send_bytes(b"ok")
    _send_pair(conn, reply, context)


def serve_forever(folder: Path) -> None:
    """Answer one message at a time (a SuperNode runs one ClientApp at a time) until stopped."""
    from fedvl.transport.flower import make_client_app  # first: it sets Flower's environment

    app = make_client_app()
    with Listener(str(folder / SOCKET), family="AF_UNIX", authkey=(folder / KEY).read_bytes()) as listener:
        while True:
            try:
                conn = listener.accept()
            except (AuthenticationError, OSError, EOFError) as e:  # a caller without the key, or gone
                print(f"fedvl node worker: refused a connection ({type(e).__name__}: {e})", file=sys.stderr,
                      flush=True)
                continue
            with conn:
                try:
                    _answer(conn, app)
                except OSError as e:  # the flwr-clientapp process was stopped while we worked
                    print(f"fedvl node worker: could not reply ({e})", file=sys.stderr, flush=True)


def ask(folder: Path, message, context, wait_s: float = 300.0):
    """Hand one message and its Context to the worker; its reply Message. The Context's state
    (SecAgg+ keeps its per-stage secrets there) comes back updated in place."""
    key = (folder / KEY).read_bytes()
    deadline = time.monotonic() + wait_s
    while True:  # the worker may still be importing torch when the first message arrives
        try:
            conn = Client(str(folder / SOCKET), family="AF_UNIX", authkey=key)
            break
        except (FileNotFoundError, ConnectionRefusedError) as e:
            if time.monotonic() > deadline:
                raise NodeWorkerError(f"the node's fedvl worker at {folder} does not answer after {wait_s:.0f}s "
                                      f"({type(e).__name__}); is `fedvl join` still running?") from None
            time.sleep(0.1)
    with conn:
        _send_pair(conn, message, context)
        if conn.recv_bytes() == b"error":
            name, text = conn.recv_bytes().decode(), conn.recv_bytes().decode()
            if name == "ConfigError":  # kept by name: `fedvl join` stops on a partition the run lacks
                from fedvl.schema import ConfigError

                raise ConfigError(text)
            raise NodeWorkerError(f"{name}: {text}")
        reply, back = _recv_pair(conn)
    context.state = back.state
    return reply


if __name__ == "__main__":
    serve_forever(Path(sys.argv[1]))
