"""The ClientApp a deployment's nodes load (``fedvl serve`` names it in the Flower App).

Flower starts one ``flwr-clientapp`` process per message, so this module imports Flower and
nothing heavy: each message goes to the node's warm worker (:mod:`fedvl.deploy.node_worker`),
started by ``fedvl join``, which keeps the model and the partition's data in memory. A node
started without one (a bare ``flower-supernode``) runs fedvl's ClientApp in this process, as
before: correct, only slower.
"""

from pathlib import Path

from fedvl.transport import flower_env  # noqa: F401  (first: before flwr is imported)

# isort: split
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedvl.deploy.node_worker import WORKER_KEY, ask

client_app = ClientApp()
_LOCAL: list[ClientApp] = []  # fedvl's full ClientApp, built on first use when there is no worker


def _handle(msg: Message, context: Context) -> Message:
    folder = context.node_config.get(WORKER_KEY)
    if folder:
        return ask(Path(str(folder)), msg, context)
    if not _LOCAL:
        from fedvl.transport.flower import make_client_app

        _LOCAL.append(make_client_app())
    return _LOCAL[0](message=msg, context=context)


# one handler for every message type; the worker's ClientApp dispatches (and runs SecAgg+'s mod)
client_app.query()(_handle)
client_app.train()(_handle)
client_app.evaluate()(_handle)
