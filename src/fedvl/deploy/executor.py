"""A deployed node's warm executor: one long-lived fedvl process that claims the node's ClientApp
tasks itself and runs them with the model and the partition's data kept in memory.

Flower (1.42) runs a ClientApp as one ``flwr-clientapp`` process per message; importing Flower,
torch and fedvl and rebuilding the model cost seconds in each (docs/performance.md). With
``--isolation process`` a SuperNode launches nothing itself: it queues each message as a task on
its local Runtime API for whatever program holds the node's SuperExec secret. This is that
program. It makes the calls ``flwr-clientapp`` makes (``flwr.supernode.runtime.run_clientapp``):
acquire a task (signed with the secret), pull its input with the task's token, run fedvl's
ClientApp (:func:`fedvl.transport.flower.make_client_app`, the same as the simulation's), push the
reply and the task's outcome, and heartbeat while it works; then it waits for the next task.

What Flower's own client does and this one must not: its HTTP retry stops its process with SIGINT
on a 401, and so does a refused heartbeat; here a revoked task is logged and dropped and the
executor takes the next one. The executor never starts a process, so no token is on a command
line; the secret is a file in the node's private folder (0700). A task in flight when the process
dies is written down first (``inflight``: the token and the message's metadata, no contents); the
executor ``fedvl join`` starts next reports it failed at once with an error reply, rather than the
SuperNode waiting a minute for a heartbeat to lapse. The model in memory is keyed by run (a new run
builds its own); each client's local state is written to the node's state folder after every
message, so an executor that dies loses none of it.

    python -m fedvl.deploy.executor FOLDER --runtime 127.0.0.1:PORT   (started by ``fedvl join``)
"""

from __future__ import annotations

from fedvl.transport import flower_env  # noqa: F401  (first: before flwr is imported)

# isort: split
import argparse
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import httpx
from flwr.app import Message
from flwr.app.error import Error
from flwr.app.message import remove_content_from_message
from flwr.common import serde
from flwr.common.config import get_fab_config
from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, ErrorCode, SubStatus
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry.retry_invoker import RetryInvoker, constant
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from fedvl.deploy.flower_pins import ACQUIRE_TASK, cut_pull_backoff
from fedvl.deploy.names import CLIENT_APP_REF, EXIT_FATAL, FATAL, INFLIGHT
from fedvl.deploy.node_worker import KEY

DEFAULT_POLL_S = 0.02  # a look for the next task: a local request to the node's own API
HEARTBEAT_S = HEARTBEAT_DEFAULT_INTERVAL / 3  # Flower revokes a task after 2 intervals without one


def _retry(max_time: float | None = None) -> RetryInvoker:
    """Retry only what a restarting SuperNode causes (the connection), quickly and for ever (or for
    ``max_time`` seconds); an HTTP error (a revoked token, a refused call) goes to the caller.
    Flower's own invoker would SIGINT."""
    return RetryInvoker(wait_gen_factory=lambda: constant(0.2), recoverable_exceptions=httpx.TransportError,
                        max_tries=None, max_time=max_time, on_backoff=None, on_giveup=None, on_success=None)


def runtime_client(address: str, interceptors: list, root_certificates: bytes | None = None,
                   max_time: float | None = None) -> RuntimeHttpClient:
    """A client of a Runtime API (a SuperNode's local one, or a SuperLink's: TLS when it has a CA)."""
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=root_certificates is None,
                                                 root_certificates=root_certificates, interceptors=interceptors,
                                                 retry_invoker=_retry(max_time))


class Heartbeat(threading.Thread):
    """Keeps a claimed task alive while it runs. A refused heartbeat (the task was revoked) is only
    recorded: the task's outcome then cannot be pushed and is dropped, and the executor goes on."""

    def __init__(self, client: RuntimeHttpClient):
        super().__init__(daemon=True)
        self.client, self.stopped, self.revoked = client, threading.Event(), False

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            try:
                if not self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success:
                    self.revoked = True
                    return
            except httpx.HTTPError:  # the next beat tries again; two missed ones revoke the task
                continue


def app_table(fab) -> dict:
    """A Flower App bundle's ``[tool.flwr.app]`` (its components and run config)."""
    return get_fab_config(fab.content).get("tool", {}).get("flwr", {}).get("app", {})


def _check_app(fab) -> None:
    """Refuse to run a Flower App other than fedvl's: this node's secret, data and memory are for it."""
    ref = app_table(fab).get("components", {}).get("clientapp")
    if ref != CLIENT_APP_REF:
        raise RuntimeError(f"this node runs fedvl's ClientApp only ({CLIENT_APP_REF}), the run asks for {ref!r}")


def _error_reply(message: Message, ex: BaseException) -> Message:
    reason = str(type(ex)) + ":<'" + str(ex) + "'>"  # Flower's own format for a ClientApp's exception
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)


class Executor:
    def __init__(self, folder: Path, address: str, poll_s: float = DEFAULT_POLL_S):
        from fedvl.transport.flower import make_client_app

        self.folder, self.address, self.poll_s = folder, address, poll_s
        secret = (folder / KEY).read_bytes()  # the SuperExec secret `fedvl join` gave the SuperNode
        self.tasks = runtime_client(address, [RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                                              SuperExecAuthHttpInterceptor(master_secret=secret,
                                                                           protected_methods={ACQUIRE_TASK})])
        self.app = make_client_app()

    def next_token(self) -> str | None:
        res = self.tasks.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        return res.token if res.HasField("task") and res.token else None

    def serve_forever(self) -> None:
        self.report_lost_task()
        while True:
            token = self.next_token()
            if token is None:
                time.sleep(self.poll_s)
                continue
            if self.run_task(token):  # the run cannot use this node: `fedvl join` stops it
                sys.exit(EXIT_FATAL)

    def run_task(self, token: str) -> bool:
        """Run one claimed task to its end; True when the node must stop (the run cannot use it)."""
        client = runtime_client(self.address, [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                                               RuntimeTokenHttpInterceptor(token)])
        beat = Heartbeat(client)
        beat.start()
        message = context = reply = None
        status, details, fatal = SubStatus.FAILED, "ClientApp task failed", False
        try:
            message, context, run, fab = pull_task_input(client)
            self._write_inflight(token, message)
            _check_app(fab)
            reply = self.app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # noqa: BLE001  (any error goes back to the message's sender)
            traceback.print_exc()
            details = f"{type(ex).__name__}: {ex}"
            from fedvl.schema import ConfigError

            if isinstance(ex, ConfigError) and "this node holds partition" in str(ex):
                fatal = True  # written before the reply goes, so `fedvl join` sees it when the reply is sent
                (self.folder / FATAL).write_text(str(ex))
            if message is not None:
                reply = _error_reply(message, ex)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                push_task_output(client, context, status, details)
            except httpx.HTTPError as e:  # revoked meanwhile (heartbeat lapsed, run stopped): nothing to do
                print(f"fedvl executor: the task's reply was not taken ({e}); next task", file=sys.stderr,
                      flush=True)
            beat.stopped.set()
            client.close()
            (self.folder / INFLIGHT).unlink(missing_ok=True)
        return fatal

    def _write_inflight(self, token: str, message: Message) -> None:
        """The task this process holds (its token, the message's metadata): for the next executor."""
        path = self.folder / INFLIGHT
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(token.encode() + b"\n" +
                    serde.message_to_proto(remove_content_from_message(message)).SerializeToString())
        os.replace(tmp, path)

    def report_lost_task(self) -> None:
        """An executor that died mid-task left its task in ``inflight``: reply with an error and mark
        the task failed now, so the server hears of it at once and can retry the round."""
        path = self.folder / INFLIGHT
        if not path.exists():
            return
        token, _, proto = path.read_bytes().partition(b"\n")
        path.unlink()
        message = serde.message_from_proto(ProtoMessage.FromString(proto))
        client = runtime_client(self.address, [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                                               RuntimeTokenHttpInterceptor(token.decode())])
        why = "the node's fedvl executor died while running this message (it has been restarted)"
        try:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=why), reply_to=message)
            push_message(client, reply, _Where(message))
            push_task_output(client, None, SubStatus.FAILED, why)
            print("fedvl executor: reported the message it was running when it died as failed", file=sys.stderr,
                  flush=True)
        except httpx.HTTPError as e:  # the task was already revoked: Flower answered for it
            print(f"fedvl executor: the lost task was already closed ({e})", file=sys.stderr, flush=True)
        finally:
            client.close()


class _Where:
    """What :func:`push_message` reads of a Context: the node and the run."""

    def __init__(self, message: Message):
        self.node_id, self.run_id = message.metadata.dst_node_id, message.metadata.run_id


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m fedvl.deploy.executor", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="the node's private folder (its SuperExec secret)")
    p.add_argument("--runtime", required=True, help="the SuperNode's local Runtime API, HOST:PORT")
    p.add_argument("--poll-s", type=float, default=DEFAULT_POLL_S, help="wait between looks for a task")
    args = p.parse_args(argv)
    cut_pull_backoff()
    Executor(args.folder, args.runtime, args.poll_s).serve_forever()


if __name__ == "__main__":
    main()
