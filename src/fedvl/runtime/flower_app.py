"""The Flower App a deployment runs (``fedvl serve`` points Flower at these two objects).

The experiment config travels in the run config (``fedvl-config``); each node's
partition and state folder come from its node config (``fedvl join``).
"""

from fedvl.runtime.flower import make_client_app, make_server_app

server_app = make_server_app()
client_app = make_client_app()
