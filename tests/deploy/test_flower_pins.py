"""The Flower internals fedvl relies on (fedvl.deploy.flower_pins) are where it expects them: a Flower
release that moves one fails here, not silently in a deployment."""

import inspect

from fedvl.deploy import flower_pins


def test_every_pinned_internal_exists():
    assert flower_pins.missing() == []


def test_the_superexec_signs_acquire_task_only():
    from flwr.supercore.superexec.run_superexec import _SUPEREXEC_AUTH_METHODS

    assert _SUPEREXEC_AUTH_METHODS == {flower_pins.ACQUIRE_TASK}


def test_the_supernode_loop_sleeps_where_the_caps_expect():
    """fedvl.deploy.supernode caps the loop's one network wait (3 s) and its two local waits (0.5 s)."""
    from fedvl.deploy.supernode import IDLE_SLEEP_S

    sleeps = flower_pins.supernode_loop_sleeps()
    assert sleeps == [IDLE_SLEEP_S, 0.5, 0.5]
    assert all(s < IDLE_SLEEP_S for s in sleeps[1:])  # the cap tells them apart by length


def test_cutting_the_pull_backoff_replaces_flowers_first_wait(monkeypatch):
    import flwr.supercore.inflatable.inflatable_utils as utils

    for name in ("pull_objects", "pull_and_inflate_object_from_tree"):
        monkeypatch.setattr(getattr(utils, name), "__kwdefaults__", dict(getattr(utils, name).__kwdefaults__))
    from flwr.supercore.constant import PULL_INITIAL_BACKOFF

    assert PULL_INITIAL_BACKOFF == 1  # what Flower waits first (the cut is only worth it while so)
    flower_pins.cut_pull_backoff(0.03)
    assert flower_pins.backoff_defaults() == {"pull_objects": 0.03, "pull_and_inflate_object_from_tree": 0.03}
    # and pull_and_inflate hands its own default on to pull_objects
    assert "initial_backoff=initial_backoff" in inspect.getsource(utils.pull_and_inflate_object_from_tree)


def test_the_executor_calls_what_flwr_clientapp_calls():
    """The executor reuses run_clientapp's pull and push helpers: their signatures stay as it calls them."""
    from flwr.supernode.runtime import run_clientapp

    assert list(inspect.signature(run_clientapp.pull_task_input).parameters) == ["client"]
    assert list(inspect.signature(run_clientapp.push_message).parameters) == ["client", "message", "context"]
    assert list(inspect.signature(run_clientapp.push_task_output).parameters) == \
        ["client", "context", "sub_status", "details"]
    # what the executor guards against: Flower's retry stops its own process on a 401
    from flwr.supercore.retry import http_retry

    assert "os.kill(os.getpid(), signal.SIGINT)" in inspect.getsource(http_retry)


def test_serve_makes_the_calls_flwr_serverapp_makes():
    """fedvl.deploy.server_task runs the ServerApp task as Flower's run_serverapp does: the same task
    input and output calls, the run id messages read from TaskIdentity, the run config fused from the
    Flower App; and the SuperLink takes the two options serve starts it with."""
    import importlib

    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

    run_serverapp = importlib.import_module("flwr.superlink.runtime.run_serverapp")  # the package shadows the name
    source = inspect.getsource(run_serverapp.run_serverapp)
    for call in ("PullTaskInput(", "PushTaskOutput(", "TaskIdentity.run_id = res.run.run_id", "grid.set_run(run)",
                 "HttpGrid(", "get_fused_config_from_dir("):
        assert call in source, call
    message_module = importlib.import_module("flwr.app.message.message")
    assert "run_id=TaskIdentity.run_id" in inspect.getsource(message_module)
    args = _parse_args_run_superlink().parse_args(["--isolation", "process", "--superexec-auth-secret-file", "k"])
    assert args.isolation == "process" and args.superexec_auth_secret_file == "k"


def test_the_supernodes_reconnection_wait_is_read_when_it_retries():
    """fedvl.deploy.supernode caps the wait by setting http_retry's module constant: Flower's invoker
    must read it when it builds its waits, not copy it at import."""
    from flwr.supercore.retry import http_retry

    assert http_retry.MAX_RETRY_DELAY == 20  # Flower's own cap (the cut is only worth it while so high)
    assert "wait_gen_factory=lambda: exponential(max_delay=MAX_RETRY_DELAY)" in \
        inspect.getsource(http_retry.make_simple_http_retry_invoker)
