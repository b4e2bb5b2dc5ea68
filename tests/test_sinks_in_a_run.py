"""A run configured only by its config writes TensorBoard, MLflow, CSV and a profiler trace; each is
read back."""

import csv
import json

import pytest

from helpers import tiny_data, tiny_mlp
from trainforge import TrainConfig, Trainer


@pytest.mark.slow
def test_config_selected_sinks_and_profiler(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    x, y = tiny_data(n=64)
    run = tmp_path / "run"
    cfg = TrainConfig.from_dict({"run_dir": str(run), "max_epochs": 2, "batch_size": 8,
                                 "log": {"every_steps": 4, "progress": False, "profile_steps": 2,
                                         "sinks": ["jsonl", "csv", "tensorboard", "mlflow"]}})
    result = Trainer(tiny_mlp(), cfg).fit((x, y), (x, y))
    logged_steps = [4, 8, 12, 16]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == logged_steps
    assert [e.step for e in acc.Scalars("val/accuracy")] == [8, 16]

    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{run.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("trainforge")
    (mlrun,) = client.search_runs([exp.experiment_id])
    history = client.get_metric_history(mlrun.info.run_id, "train/loss")
    assert [m.step for m in history] == logged_steps
    assert history[-1].value == pytest.approx(result.history["train/loss"][-1])
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["batch_size"] == "8"

    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows if r["kind"] == "train"] == logged_steps

    traces = list((run / "profiler").glob("*.json"))
    assert traces and json.loads(traces[0].read_text())["traceEvents"]
