"""Flower's environment, set before any module imports Flower: it must never phone home, check
for updates, or pip-install an app's dependencies (an app's torch dependency would otherwise
pull a multi-GB CUDA build). Every fedvl module that imports flwr imports this first."""

import os

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
os.environ.update(FLOWER_ENV)
