"""The Flower App a deployment runs (``fedvl serve`` points Flower at these two objects).

The experiment config travels in the run config (``fedvl-config``); each node's
partition and state folder come from its node config (``fedvl join``). The ServerApp
process writes the whole results folder through :func:`fedvl.experiment.run_experiment`,
so this module sits above both the experiment and the Flower runtime.
"""

from pathlib import Path

from fedvl.experiment import run_experiment

# Flower's names come through fedvl.runtime.flower, which sets Flower's environment before importing it
from fedvl.runtime.flower import (
    CONFIG_KEY,
    RESULTS_KEY,
    Context,
    Grid,
    ServerApp,
    cfg_from_text,
    make_client_app,
    run_rounds,
)

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = cfg_from_text(str(context.run_config[CONFIG_KEY]))
    run_experiment(cfg, Path(str(context.run_config[RESULTS_KEY])), progress_enabled=False,
                   runner=lambda f, d, h, p: run_rounds(grid, f, h, p), server_only=True,
                   overwrite=True)  # `fedvl serve` checked the folder before starting


client_app = make_client_app()
