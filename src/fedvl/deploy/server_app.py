"""The Flower App a deployment runs (``fedvl serve`` points Flower at these two objects).

The experiment config travels in the run config (``fedvl-config``); each node's
partition and state folder come from its node config (``fedvl join``). The server side
(:func:`run_server_app`, in ``fedvl serve``'s own process or Flower's ``flwr-serverapp``)
writes the whole results folder through :func:`fedvl.experiment.run_experiment`, so this
module sits above both the experiment and the Flower runtime.
"""

import os
from pathlib import Path

from fedvl.deploy.flower_pins import cut_pull_backoff
from fedvl.deploy.names import CONFIG_KEY, DEPLOYMENT_FILE, RESULTS_KEY, RESUME_KEY, RUN_TOKEN_KEY
from fedvl.deploy.process import die_with_parent
from fedvl.experiment import run_experiment
from fedvl.models.backbones import text_encoder_imported
from fedvl.report.history import write_json_atomic
from fedvl.runfolder import read_status

# Flower's names come through fedvl.transport.flower, which sets Flower's environment before importing it
from fedvl.transport.flower import (
    ConfigError,
    Context,
    FlowerRunError,
    Grid,
    ServerApp,
    WarmUp,
    cfg_from_text,
    make_client_app,
    run_rounds,
)

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's own ``flwr-serverapp`` process (``fedvl serve --executor flower``)."""
    # This process is its SuperExec's child in the SuperExec's own session, so stopping `fedvl serve`'s
    # SuperLink does not reach it; one whose SuperExec died would live on, holding the results folder,
    # and `serve --resume` could never take it. So it ends with its parent.
    die_with_parent()
    if os.getppid() == 1:  # the parent was gone before the line above
        raise SystemExit("fedvl: the SuperExec that started this ServerApp is gone")
    # the grid pulls each reply; one visible before its contents are stored would wait 1 s (flower_pins)
    cut_pull_backoff()
    run_server_app(grid, context)


def run_server_app(grid: Grid, context: Context) -> None:
    """The deployed experiment, on ``grid``, from the run config ``fedvl serve`` wrote: in Flower's
    ServerApp process (:func:`main`) or in ``serve``'s own (:mod:`fedvl.deploy.server_task`)."""
    cfg = cfg_from_text(str(context.run_config[CONFIG_KEY]))
    token = str(context.run_config[RUN_TOKEN_KEY])
    warm = WarmUp(grid)  # the nodes build while this process builds the server's side

    def rounds(fed, run_dir, history, progress, server, start):
        warm.stop()  # the grid is the rounds' from here
        # the run's token, for `fedvl serve --resume` to hand the nodes again (they keep its state)
        write_json_atomic(run_dir / DEPLOYMENT_FILE, {RUN_TOKEN_KEY: token})
        return run_rounds(grid, fed, history, progress, server, start)

    run_dir = Path(str(context.run_config[RESULTS_KEY]))
    warm.start()
    text_encoder_imported()  # `fedvl serve` imports it while its SuperLink starts: not twice at once
    try:
        run_experiment(cfg, run_dir, progress_enabled=False, runner=rounds, server_only=True,
                       resume=bool(context.run_config.get(RESUME_KEY, False)),
                       overwrite=True)  # `fedvl serve` checked the folder before starting
    except (FlowerRunError, ConfigError) as e:
        # an explained end (no node joined, too few clients answered, a bad node) that the run's status.json
        # records: `fedvl serve` says it in one line, where Flower would print a traceback
        if not _recorded(run_dir, e):
            raise
    finally:
        warm.stop()


def _recorded(run_dir: Path, e: BaseException) -> bool:
    record = read_status(run_dir) or {}
    return record.get("state") == "failed" and str(e) in str(record.get("error"))


client_app = make_client_app()
