"""run.trackers: TensorBoard event files and an MLflow run mirror metrics.jsonl, read back with
the libraries' own readers; a tracker that fails is a warning, never a lost run."""

import pytest

from fedvl.experiment import run_experiment
from fedvl.report.history import History
from fedvl.report.trackers import scalars

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def test_scalars_flatten_a_round_record():
    rec = {"round": 3, "sampled": ["a"], "rejected": {"a": "why"}, "train_loss": 1.5, "avg": {"acc": 0.5},
           "eval": {"c0 photo?": {"acc": 0.25, "n": 8}}, "attacker": True, "nan": float("nan")}
    assert scalars(rec) == {"train_loss": 1.5, "avg/acc": 0.5, "eval/c0 photo_/acc": 0.25, "eval/c0 photo_/n": 8.0}


def _tensorboard_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    out = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    text = [t for t in acc.Tags()["tensors"] if t.startswith("config")]
    return out, text


def _mlflow_run(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("fedvl")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_tensorboard_and_mlflow_match_metrics_jsonl(tiny_cfg, tmp_path, capsys):
    uri = (tmp_path / "mlstore").as_uri()
    cfg = tiny_cfg("algorithm.name=feddat", "run.trackers=tensorboard,mlflow", f"run.mlflow_uri={uri}",
                   "run.name=tracked")
    run_dir = tmp_path / "results" / "tracked"
    run_experiment(cfg, run_dir, progress_enabled=False)
    records = History.read(run_dir)
    assert len(records) == 2 and "warning" not in capsys.readouterr().err
    # TensorBoard: every scalar of every round, at step = round, equal to metrics.jsonl (float32 events)
    tb, text = _tensorboard_scalars(run_dir)
    assert text, "the config is logged as text"
    for rec in records:
        want = scalars(rec)
        assert {"avg/acc", "avg/acc_local", "train_loss", "eval/c0-photo/acc", "train/c1-sketch/train_loss"} <= set(want)
        for k, v in want.items():
            assert tb[k][rec["round"]] == pytest.approx(v, rel=1e-6), k
    # MLflow: params from the config, the same metric history, the summary and plot as artifacts
    client, run = _mlflow_run(uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["algorithm.name"] == "feddat" and run.data.params["run.trackers"] == "tensorboard,mlflow"
    for k in ("avg/acc", "avg/bal_acc", "train_loss", "eval/c3-painting/acc", "train/c0-photo/steps"):
        hist = {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)}
        assert hist == {r["round"]: pytest.approx(scalars(r)[k], rel=1e-9) for r in records}, k
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.md", "summary.json", "accuracy.png", "config.yaml"} <= arts


def test_default_mlflow_store_is_under_output_dir(tiny_cfg, tmp_path):
    cfg = tiny_cfg("run.trackers=mlflow", "algorithm.rounds=1", "run.name=local")
    run_experiment(cfg, tmp_path / "results" / "local", progress_enabled=False)
    client, run = _mlflow_run((tmp_path / "results" / "mlruns").as_uri())
    final = History.read(tmp_path / "results" / "local")[-1]
    assert run.data.metrics["avg/acc"] == pytest.approx(final["avg"]["acc"])


def test_unreachable_tracker_is_a_warning_and_the_run_completes(tiny_cfg, tmp_path, capsys):
    # port 9 (discard) on localhost: nothing listens, the connection is refused at once
    cfg = tiny_cfg("run.trackers=mlflow,tensorboard", "run.mlflow_uri=http://127.0.0.1:9", "algorithm.rounds=1",
                   "run.name=down")
    run_dir = tmp_path / "results" / "down"
    run_experiment(cfg, run_dir, progress_enabled=False)
    err = capsys.readouterr().err
    assert "fedvl: warning: tracker mlflow could not start" in err and "metrics.jsonl has every round" in err
    assert len(History.read(run_dir)) == 1 and (run_dir / "summary.json").is_file()
    tb, _ = _tensorboard_scalars(run_dir)  # the other tracker still works
    assert tb["avg/acc"][1] == pytest.approx(History.read(run_dir)[0]["avg"]["acc"], rel=1e-6)


def test_tracker_failing_mid_run_is_dropped_with_one_warning(tmp_path):
    from fedvl.report.trackers import Trackers

    class Flaky:
        name = "flaky"
        calls = 0

        def log_round(self, rnd, values):
            Flaky.calls += 1
            raise ConnectionError("server went away")

        def finish(self, run_dir, status):
            raise AssertionError("a dropped tracker is not finished")

    warnings = []
    t = Trackers([Flaky()], warn=warnings.append)
    for r in (1, 2, 3):
        t.log_round({"round": r, "train_loss": 1.0})
    t.finish(tmp_path, ok=True)
    assert Flaky.calls == 1 and len(warnings) == 1 and "server went away" in warnings[0]


def test_unknown_tracker_is_a_config_error(tiny_cfg):
    from fedvl.schema import ConfigError

    with pytest.raises(ConfigError, match="unknown tracker 'wandb'"):
        tiny_cfg("run.trackers=wandb")
