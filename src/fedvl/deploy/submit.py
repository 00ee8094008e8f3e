"""``flwr run`` as ``fedvl serve`` runs it: Flower's own CLI, imported while the SuperLink starts.

Importing Flower's CLI takes most of a second, and so does the SuperLink's start-up; ``serve`` starts
this process beside the SuperLink, before it has even loaded the experiment's config, so both
happen at once. Once ``serve`` says go (``READY`` in the folder: the Flower App is written and the
SuperLink listens), this runs ``flwr run APP fedvl`` unchanged (with ``--stream`` when Flower's own ServerApp
process runs the experiment and its output comes through the SuperLink). It ends with ``serve``
(parent-death signal) and gives up if ``serve`` never says go.

    python -m fedvl.deploy.submit FOLDER [--stream]   (started by ``fedvl serve``)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

READY = "ready"  # in FOLDER: the Flower App is written, the SuperLink listens (node keys registered); submit it
APP = "app"  # FOLDER/app: the Flower App


def _wait(ready: Path, timeout: float = 3600.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if time.monotonic() > deadline:
            raise SystemExit("fedvl submit: fedvl serve never said to submit")
        time.sleep(0.02)


def main() -> None:
    from fedvl.transport import flower_env  # noqa: F401  (Flower's environment before flwr is imported)
    from flwr.cli.app import app

    folder, stream = Path(sys.argv[1]), sys.argv[2:] == ["--stream"]
    _wait(folder / READY)
    sys.argv = ["flwr", "run", str(folder / APP), "fedvl"] + (["--stream"] if stream else [])
    sys.exit(app())


if __name__ == "__main__":
    main()
