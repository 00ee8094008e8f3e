"""Experiment trackers beside ``metrics.jsonl`` (``run.trackers``): TensorBoard and MLflow.

``metrics.jsonl`` stays the record of a run; a tracker only mirrors it. Every number of a
round record becomes one scalar named by its path (``avg/acc``, ``eval/c0-photo/acc``,
``train/c0-photo/train_loss``, ``server/accepted_frac``, ...) at step = round. A tracker
that is not installed or cannot be reached is reported once as a warning and then left
alone: the run goes on, and never fails for it. Install them with ``pip install fedvl[track]``.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")  # what MLflow accepts in a metric name
SKIP = {"round", "sampled", "rejected"}  # not scalars (the round is the step)


def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of a round record, keyed by its path (``eval/<client>/acc``)."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if not prefix and k in SKIP:
            continue
        key = f"{prefix}{_KEY.sub('_', str(k))}"
        if isinstance(v, dict):
            out.update(scalars(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def _flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = (",".join(map(str, v)) if isinstance(v, list) else str(v))[:6000]
    return out


class TensorBoardTracker:
    """Event files under ``<run>/tensorboard`` (``tensorboard --logdir <run>``), the config as text."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, config: dict[str, Any], config_text: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        # four-space indent: TensorBoard renders the text as markdown, a code block keeps the YAML readable
        self.writer.add_text("config", "    " + config_text.replace("\n", "\n    "), 0)

    def log_round(self, rnd: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, rnd)
        self.writer.flush()  # a live TensorBoard sees every round as it ends

    def finish(self, run_dir: Path, status: str) -> None:
        self.writer.close()


class MLflowTracker:
    """One MLflow run per fedvl run (experiment ``fedvl``): the config as params, every round's
    scalars as metrics, the summary, config and plots as artifacts. ``run.mlflow_uri`` names a
    tracking server the user runs; empty -> a local file store, ``<output_dir>/mlruns``."""

    name = "mlflow"
    ARTIFACTS = ("config.yaml", "summary.md", "summary.json", "accuracy.png", "fidelity.png",
                 "samples-first.png", "samples-last.png")

    def __init__(self, run_dir: Path, config: dict[str, Any], config_text: str, uri: str, output_dir: str,
                 run_name: str = ""):
        # a dead server must cost seconds, not MLflow's default minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        if not uri:
            uri = (Path(output_dir).resolve() / "mlruns").as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store only behind this switch; it needs no database or server
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name("fedvl")
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment("fedvl")
        self.run_id = self.client.create_run(exp_id, run_name=run_name or run_dir.name,
                                             tags={"fedvl.run_dir": str(run_dir.resolve())}).info.run_id
        params = [Param(k, v) for k, v in _flat_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_round(self, rnd: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, rnd) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def finish(self, run_dir: Path, status: str) -> None:
        for name in self.ARTIFACTS:
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        self.client.set_terminated(self.run_id, status)


class Trackers:
    """The run's trackers; each failure is one warning, after which that tracker is dropped."""

    def __init__(self, trackers: list[Any] | None = None,
                 warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
        self.active = list(trackers or [])
        self.warn = warn

    def _each(self, what: str, call: Callable[[Any], None]) -> None:
        for t in list(self.active):
            try:
                call(t)
            except Exception as e:  # noqa: BLE001 - a tracker must never stop a run
                self.active.remove(t)
                self.warn(f"fedvl: warning: tracker {t.name} failed to {what} ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]}); it is off for the rest of this run, "
                          f"metrics.jsonl has every round")

    def log_round(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        self._each("log a round", lambda t: t.log_round(int(record["round"]), values))

    def finish(self, run_dir: Path, ok: bool) -> None:
        self._each("finish", lambda t: t.finish(run_dir, "FINISHED" if ok else "FAILED"))
        self.active = []


def open_trackers(cfg, run_dir: Path, warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Trackers:
    """The trackers ``cfg.run.trackers`` names; one that cannot start is a warning, not an error."""
    from fedvl.schema import dump_config

    config, text = cfg.to_dict(), dump_config(cfg)
    out = Trackers(warn=warn)
    for name in cfg.run.trackers:
        try:
            if name == "tensorboard":
                out.active.append(TensorBoardTracker(run_dir, config, text))
            else:
                # run.name, e.g. fedavg-adapter/seed0 in a comparison (whose folders are all named seed<k>)
                out.active.append(MLflowTracker(run_dir, config, text, cfg.run.mlflow_uri, cfg.run.output_dir,
                                                cfg.run.name))
        except ImportError as e:
            warn(f"fedvl: warning: run.trackers={name} needs its package ({e.name or e}): "
                 f"pip install 'fedvl[track]'; running without it")
        except Exception as e:  # noqa: BLE001 - e.g. a tracking server that is down
            warn(f"fedvl: warning: tracker {name} could not start ({type(e).__name__}: "
                 f"{' '.join(str(e).split())[:200]}); running without it, metrics.jsonl has every round")
    return out
