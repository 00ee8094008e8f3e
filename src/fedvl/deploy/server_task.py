"""``fedvl serve``'s ServerApp, run in ``serve``'s own process: it claims the run it submitted.

Flower (1.42) runs a ServerApp as a process per run: a SuperExec beside the SuperLink looks for the
submitted run and launches ``flwr-serverapp``, which imports Flower, torch and fedvl again, builds
the server's side and streams its output back through the SuperLink's log API, which ``flwr run
--stream`` polls once a second. On a short run that is seconds of start-up and shut-down
(docs/performance.md). With ``--isolation process`` the SuperLink launches nothing: it queues the run
as a task on its Runtime API for whatever program holds its SuperExec secret. ``serve`` is that
program; it has fedvl and the experiment's config loaded already. It makes the calls
``flwr-serverapp`` makes (``flwr.superlink.runtime.run_serverapp``): acquire the task (signed with
the secret), pull its input with the task's token, run :func:`fedvl.deploy.server_app.run_server_app`
on Flower's own HTTP grid, heartbeat while it runs, push the task's outcome.

The Runtime API shares the SuperLink's public port, so the secret (a file in ``serve``'s private
folder, never on a command line) is what keeps anyone else from claiming the run. A run that is not
the one this ``serve`` submitted (another ``flwr run`` to the same SuperLink) is marked failed and
left; ``serve`` waits on for its own.
"""

from __future__ import annotations

from fedvl.transport import flower_env  # noqa: F401  (first: before flwr is imported)

# isort: split
import _thread
import sys
import threading
import time
import traceback

import httpx
from flwr.common.config import get_fused_config_from_fab
from flwr.common.constant import SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.runtime_pb2 import AcquireTaskRequest, PullTaskInputRequest, PushTaskOutputRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.grid import HttpGrid

from fedvl.deploy.executor import Heartbeat, app_table, runtime_client
from fedvl.deploy.flower_pins import ACQUIRE_TASK, cut_pull_backoff
from fedvl.deploy.names import RUN_TOKEN_KEY, SERVER_APP_REF

POLL_S = 0.02  # a look for the submitted run: a request to the SuperLink on this machine
SUBMITTED_WAIT_S = 30.0  # after `flwr run` said it submitted, the run is a task within this long
PUSH_WAIT_S = 10.0  # the outcome's push retries a lost connection this long (the SuperLink is ours)


class SubmitError(RuntimeError):
    """The run never became a task (``flwr run`` failed, or the SuperLink stopped)."""


def is_ours(fab, token: str) -> bool:
    """Whether a run's Flower App is the one this ``serve`` wrote: fedvl's ServerApp and this run's token."""
    try:
        app = app_table(fab)
    except Exception:  # noqa: BLE001  (not even a readable Flower App: not this serve's)
        return False
    return (app.get("components", {}).get("serverapp") == SERVER_APP_REF
            and app.get("config", {}).get(RUN_TOKEN_KEY) == token)


class ServerTask:
    """The SuperLink's Runtime API as ``serve`` uses it: ``address`` (``host:port``), its CA
    (``root_certificates``, None without TLS) and the SuperExec ``secret``."""

    def __init__(self, address: str, secret: bytes, root_certificates: bytes | None):
        self.address, self.ca = address, root_certificates
        self.tasks = runtime_client(address, [RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                                              SuperExecAuthHttpInterceptor(master_secret=secret,
                                                                           protected_methods={ACQUIRE_TASK})],
                                    root_certificates, max_time=PUSH_WAIT_S)

    def claim(self, runner, link_proc) -> str:
        """The token of the next ServerApp task; ``runner`` (``flwr run``) submits it, ``link_proc``
        (the SuperLink) must stay up. Raises :class:`SubmitError` when the run cannot come."""
        submitted_at = None
        while True:
            res = self.tasks.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP]))
            if res.HasField("task") and res.token:
                return res.token
            if link_proc.poll() is not None:
                raise SubmitError(f"the SuperLink stopped (exit code {link_proc.returncode})")
            code = runner.poll()
            if code not in (None, 0):
                raise SubmitError(f"`flwr run` could not submit the run (exit code {code}; its error is above)")
            if code == 0:
                submitted_at = submitted_at or time.monotonic()
                if time.monotonic() - submitted_at > SUBMITTED_WAIT_S:
                    raise SubmitError(f"`flwr run` submitted the run, but no ServerApp task came within "
                                      f"{SUBMITTED_WAIT_S:.0f}s")
            time.sleep(POLL_S)

    def run(self, token: str, run_token: str, link_proc) -> bool:
        """Run the claimed task to its end: True when it was this ``serve``'s run (its outcome is in the
        results folder), False when it was another's (refused and marked failed)."""
        from fedvl.deploy.server_app import run_server_app

        client = runtime_client(self.address, [RuntimeVersionHttpInterceptor(component_name="flwr-serverapp"),
                                               RuntimeTokenHttpInterceptor(token)], self.ca, max_time=PUSH_WAIT_S)
        beat = Heartbeat(client)
        beat.start()
        # a task whose input cannot even be read is taken for this serve's own (it submitted one run):
        # its failure ends the wait rather than leaving serve waiting for a run that will not come
        status, details, ours = SubStatus.FAILED, "fedvl serve's ServerApp failed", True
        watch = _Watch(link_proc)
        try:
            res = client.PullTaskInput(PullTaskInputRequest())
            fab = fab_from_proto(res.fab)
            if not is_ours(fab, run_token):
                ours = False
                details = "this SuperLink runs the experiment of the `fedvl serve` that started it, no other run"
                print(f"fedvl serve: refused run {res.run.run_id}: it is not the run this serve submitted",
                      file=sys.stderr, flush=True)
                return False
            # what flwr-serverapp sets: messages take their run id from here
            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = \
                res.task_id, res.run.run_id, res.context.node_id
            context, run = context_from_proto(res.context), run_from_proto(res.run)
            context.run_config = get_fused_config_from_fab(fab.content, run)
            grid = HttpGrid(runtime_api_address=self.address, insecure=self.ca is None,
                            root_certificates=self.ca, token=token)
            grid.set_run(run)
            cut_pull_backoff()
            watch.start()
            try:
                run_server_app(grid, context)
            finally:
                grid.close()
            status, details = SubStatus.COMPLETED, ""
        except KeyboardInterrupt:
            details = "fedvl serve was stopped" if not watch.link_gone else "the SuperLink stopped"
            raise
        except Exception as e:  # noqa: BLE001  (the results folder's status says it; serve reports it)
            details = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        finally:
            watch.done.set()
            beat.stopped.set()
            try:
                client.PushTaskOutput(PushTaskOutputRequest(context=None, sub_status=status, details=details))
            except httpx.HTTPError:  # revoked (heartbeat lapsed, `flwr stop`), or the SuperLink is gone
                pass
            client.close()
        return ours

    def close(self) -> None:
        self.tasks.close()


class _Watch(threading.Thread):
    """Stops the run (as Ctrl-C would: status ``interrupted``, resumable) if the SuperLink dies under
    it; Flower's grid would otherwise retry a connection that never comes back."""

    def __init__(self, link_proc, every_s: float = 0.5):
        super().__init__(daemon=True, name="fedvl-superlink-watch")
        self.link_proc, self.every_s, self.done, self.link_gone = link_proc, every_s, threading.Event(), False

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            if self.link_proc.poll() is not None:
                self.link_gone = True
                print(f"fedvl serve: the SuperLink stopped (exit code {self.link_proc.returncode}); stopping the run",
                      file=sys.stderr, flush=True)
                _thread.interrupt_main()
                return

