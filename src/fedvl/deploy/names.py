"""The strings that tie ``fedvl serve`` and ``fedvl join`` to the Flower apps they start: the keys
of the run config and of a node's config, and the file that holds a deployed run's token.

They live apart from the apps (:mod:`fedvl.transport.flower`, :mod:`fedvl.deploy.server_app`),
which import torch and Flower, so that ``fedvl join`` reads them without importing either.
"""

CONFIG_KEY = "fedvl-config"  # run_config key: the experiment config as YAML text
RESULTS_KEY = "results-dir"  # run_config key: where the ServerApp writes the results folder
RESUME_KEY = "resume"  # run_config key: true when `fedvl serve --resume` continues the run in the results folder
DEPLOYMENT_FILE = "deployment.json"  # in a deployed run's results folder: its run token
RUN_TOKEN_KEY = "run-token"  # run_config key: names the run on every node, the same after `serve --resume`
STATE_KEY = "state-dir"  # node_config key: where a node keeps its clients' local state
DEVICE_KEY = "device"  # node_config key: the node's own run.device (`fedvl join --device cuda:1`)

# the Flower App `fedvl serve` writes; fedvl's own processes run it and no other
SERVER_APP_REF = "fedvl.deploy.server_app:server_app"
CLIENT_APP_REF = "fedvl.deploy.node_app:client_app"
# who runs the apps (`--executor` of serve and join): fedvl's long-lived processes, or Flower's one per
# run (serve) and per message (join)
EXECUTORS = ("warm", "flower")

# the node's private folder (`fedvl join`, mode 0700), as fedvl's executor uses it (fedvl.deploy.executor);
# its key file (fedvl.deploy.node_worker.KEY) is the SuperExec secret the SuperNode and the executor share
INFLIGHT = "inflight"  # the task the executor holds: its token and the message's metadata
FATAL = "fatal"  # why the run cannot use this node; the executor then exits EXIT_FATAL
EXIT_FATAL = 3
