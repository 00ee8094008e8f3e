"""``flwr run`` as ``fedvl serve`` runs it: Flower's own CLI, imported while the SuperLink starts.

Importing Flower's CLI takes about a second, and so does the SuperLink's start-up; ``serve`` starts
this process beside the SuperLink, before it has even loaded the experiment's config, so both
happen at once. Once ``serve`` has written the Flower App (``READY`` in the folder) and the SuperLink
listens, this runs ``flwr run APP fedvl`` unchanged (with ``--stream`` when Flower's own ServerApp
process runs the experiment and its output comes through the SuperLink). It ends with ``serve``
(parent-death signal) and gives up if ``serve`` never says go.

    python -m fedvl.deploy.submit FOLDER HOST:PORT [--stream]   (started by ``fedvl serve``)
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

READY = "ready"  # in FOLDER: the Flower App is written (and any node keys registered); submit it
APP = "app"  # FOLDER/app: the Flower App


def _wait(ready: Path, host: str, port: int, timeout: float = 3600.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if time.monotonic() > deadline:
            raise SystemExit("fedvl submit: fedvl serve never wrote the Flower App")
        time.sleep(0.02)
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"fedvl submit: no SuperLink listens on {host}:{port}") from None
            time.sleep(0.05)


def main() -> None:
    from fedvl.transport import flower_env  # noqa: F401  (Flower's environment before flwr is imported)
    from flwr.cli.app import app

    folder, address, stream = Path(sys.argv[1]), sys.argv[2], sys.argv[3:] == ["--stream"]
    host, _, port = address.rpartition(":")
    _wait(folder / READY, host, int(port))
    sys.argv = ["flwr", "run", str(folder / APP), "fedvl"] + (["--stream"] if stream else [])
    sys.exit(app())


if __name__ == "__main__":
    main()
