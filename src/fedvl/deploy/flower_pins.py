"""Every Flower internal fedvl relies on, in one place (flwr is pinned to 1.42 in pyproject.toml).

Flower's public API covers apps, not the runtime around them; a deployment as fast as the in-process
run needs five things of the runtime (``../shared/DESIGN.md`` section 4b has the file and line of each):

- the SuperNode's message loop and its three sleeps, and its reconnection delay
  (:mod:`fedvl.deploy.supernode` caps them);
- the local Runtime API a ``--isolation process`` SuperNode serves, and the calls ``flwr-clientapp``
  makes on it (:mod:`fedvl.deploy.executor` makes the same calls from one long-lived process);
- the back-off when a message is visible before its contents (:func:`cut_pull_backoff`);
- the SuperExec's HMAC signature of ``AcquireTask`` (the executor signs with the node's secret);
- the SuperLink's Runtime API under ``--isolation process`` and the calls ``flwr-serverapp`` makes on
  it, with Flower's HTTP grid (:mod:`fedvl.deploy.server_task` makes them from ``fedvl serve``).

``tests/deploy/test_flower_pins.py`` checks each of them against the installed Flower, so a release
that moves one fails a test instead of silently slowing or breaking deployments.
"""

from __future__ import annotations

from fedvl.transport import flower_env  # noqa: F401  (first: before flwr is imported)

# isort: split
import importlib
import inspect

# (module, names it must have): what fedvl imports or patches
PINNED: dict[str, tuple[str, ...]] = {
    "flwr.supernode.start_client_internal": ("start_client_internal", "time"),
    "flwr.supernode.cli": ("flower_supernode",),
    "flwr.supernode.runtime.run_clientapp": ("pull_task_input", "push_message", "push_task_output"),
    "flwr.supercore.runtime": ("RuntimeHttpClient",),
    "flwr.supercore.interceptors": ("RuntimeTokenHttpInterceptor", "RuntimeVersionHttpInterceptor",
                                    "SuperExecAuthHttpInterceptor"),
    "flwr.supercore.retry.retry_invoker": ("RetryInvoker", "constant"),
    "flwr.supercore.retry.http_retry": ("MAX_RETRY_DELAY", "make_simple_http_retry_invoker"),
    "flwr.supercore.superexec.run_superexec": ("_SUPEREXEC_AUTH_METHODS",),
    "flwr.supercore.constant": ("TaskType", "PULL_INITIAL_BACKOFF"),
    "flwr.supercore.inflatable.inflatable_utils": ("pull_objects", "pull_and_inflate_object_from_tree"),
    "flwr.common.constant": ("HEARTBEAT_DEFAULT_INTERVAL", "HEARTBEAT_PATIENCE", "ErrorCode", "SubStatus"),
    "flwr.common.config": ("get_fab_config", "get_fused_config_from_fab"),
    "flwr.common.serde": ("context_from_proto", "fab_from_proto", "run_from_proto"),
    "flwr.proto.runtime_pb2": ("AcquireTaskRequest", "SendTaskHeartbeatRequest", "PullTaskInputRequest",
                               "PushTaskOutputRequest"),
    "flwr.superlink.grid": ("HttpGrid",),
    "flwr.supercore.task_identity": ("TaskIdentity",),
    "flwr.superlink.runtime.run_serverapp": ("run_serverapp",),
}

ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"  # the one Runtime call signed with the SuperExec secret
PULL_BACKOFF_S = 0.02  # first wait when a message's contents are not stored yet (Flower: 1 s, doubling)
# the functions whose keyword default is that first wait (pull_and_inflate passes its own on)
_BACKOFF_FUNCTIONS = ("pull_objects", "pull_and_inflate_object_from_tree")


def missing() -> list[str]:
    """What of :data:`PINNED` the installed Flower lacks ("module.name"); empty when all is there."""
    gone = []
    for module, names in PINNED.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            gone.append(module)
            continue
        gone += [f"{module}.{n}" for n in names if not hasattr(mod, n)]
    return gone


def cut_pull_backoff(seconds: float = PULL_BACKOFF_S) -> None:
    """Make this process wait ``seconds`` (doubling up to Flower's cap) instead of Flower's 1 s when it
    pulls a message whose contents are not stored yet. A message becomes visible before its contents
    on both the server's grid and a node, so on a localhost run this wait alone added about 1 s to
    some messages. The wait is a keyword default of two functions: the defaults are replaced."""
    import flwr.supercore.inflatable.inflatable_utils as utils

    for name in _BACKOFF_FUNCTIONS:
        fn = getattr(utils, name)
        if "initial_backoff" not in (fn.__kwdefaults__ or {}):
            raise RuntimeError(f"flwr {name} no longer takes initial_backoff: see fedvl.deploy.flower_pins")
        fn.__kwdefaults__["initial_backoff"] = seconds


def backoff_defaults() -> dict[str, float]:
    import flwr.supercore.inflatable.inflatable_utils as utils

    return {n: getattr(utils, n).__kwdefaults__["initial_backoff"] for n in _BACKOFF_FUNCTIONS}


def supernode_loop_sleeps() -> list[float]:
    """The constant sleeps of the SuperNode's message loop, in source order (the cap expects
    ``[3, 0.5, 0.5]``: no message yet, waiting for the app's reply, waiting for its contents)."""
    import ast

    import flwr.supernode.start_client_internal as loop

    tree = ast.parse(inspect.getsource(loop))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "attr", "") == "sleep" and node.args and isinstance(node.args[0], ast.Constant)]
    return [node.args[0].value for node in sorted(calls, key=lambda n: (n.lineno, n.col_offset))]
