"""Sinks: what each writes is read back with its own reader (csv, EventAccumulator, MlflowClient)."""

from __future__ import annotations

import csv
import importlib.util
import math

import pytest

from trainforge.callbacks.trackers import CsvSink, MlflowSink, SinkError, TensorBoardSink, flatten, make_sink, mlflow_key

CONFIG = {"seed": 0, "optimizer": {"name": "adamw", "lr": 3e-4, "betas": [0.9, 0.95]}, "model_args": {}}


def records(steps=range(1, 6), val_every=5, start_time=1_700_000_000.0):
    for step in steps:
        yield {"kind": "train", "step": step, "epoch": 0, "time": start_time + step,
               "train/loss": 1.0 / step, "lr": 1e-3, "grad/norm": 0.5}
        if step % val_every == 0:
            yield {"kind": "val", "step": step, "epoch": 0, "time": start_time + step,
                   "val/loss": 0.9 / step, "val/accuracy": 0.5, "eval/edge_compliance": 0.97}


def run_sink(sink, run_dir, recs, config=CONFIG):
    sink.open(run_dir, config)
    for r in recs:
        sink.write(r)
    sink.close()
    return sink


# ---- CSV -------------------------------------------------------------------------------------

def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_header_grows_and_rows_are_complete(tmp_path):
    run_sink(CsvSink(), tmp_path, records())
    rows = read_csv(tmp_path / "metrics.csv")
    assert len(rows) == 6
    assert list(rows[0])[:4] == ["kind", "step", "epoch", "time"]
    assert {"train/loss", "val/loss", "eval/edge_compliance"} <= set(rows[0])
    assert rows[0]["val/loss"] == ""  # train row: empty cell for a val metric
    val = [r for r in rows if r["kind"] == "val"][0]
    assert float(val["val/loss"]) == pytest.approx(0.18) and val["step"] == "5"
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert len({len(row) for row in csv.reader(f)}) == 1  # every row as wide as the header


def test_csv_appends_on_resume_and_floats_round_trip(tmp_path):
    run_sink(CsvSink(), tmp_path, records(range(1, 4)))
    run_sink(CsvSink(), tmp_path, [{"kind": "train", "step": 4, "epoch": 0, "time": 1.0, "train/loss": 1 / 3,
                                    "new/metric": float("nan"), "weight_version": 4}])
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert float(rows[-1]["train/loss"]) == 1 / 3
    assert math.isnan(float(rows[-1]["new/metric"])) and rows[0]["new/metric"] == ""


# ---- TensorBoard -----------------------------------------------------------------------------

needs_tb = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")


def read_tb(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


@needs_tb
def test_tensorboard_scalars_at_step(tmp_path):
    run_sink(TensorBoardSink(), tmp_path, [*records(), {"kind": "val", "step": 5, "mid_epoch": True, "val/f1": 0.5}])
    acc = read_tb(tmp_path / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "lr", "grad/norm", "val/loss", "eval/edge_compliance"} <= tags
    assert not tags & {"step", "epoch", "time", "kind", "mid_epoch"}
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5]
    assert loss[1].value == pytest.approx(0.5) and loss[1].wall_time == pytest.approx(1_700_000_002.0)
    assert [e.step for e in acc.Scalars("val/loss")] == [5]


@needs_tb
def test_tensorboard_resume_purges_abandoned_steps(tmp_path):
    run_sink(TensorBoardSink(), tmp_path, records(range(1, 7), val_every=100))
    # The run was killed at step 6 with its last checkpoint at step 3: it resumes at step 4.
    resumed = ({**r, "train/loss": 10.0} for r in records(range(4, 9), val_every=100))
    run_sink(TensorBoardSink(), tmp_path, resumed)
    loss = read_tb(tmp_path / "tensorboard").Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [e.value for e in loss][3:] == [10.0] * 5


# ---- MLflow ----------------------------------------------------------------------------------

needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow not installed")


@pytest.fixture
def no_telemetry(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # tests run offline
    monkeypatch.setenv("DO_NOT_TRACK", "true")


@needs_mlflow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy deprecations inside mlflow's store
def test_mlflow_sqlite_default_metrics_params_and_resume(tmp_path, no_telemetry):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    odd = {"kind": "val", "step": 5, "epoch": 0, "time": 1_700_000_005.0, "val/acc@1": 0.25, "flag": True}
    sink = run_sink(MlflowSink(), run_dir, [*records(), odd])
    assert sink.tracking_uri == f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    client = MlflowClient(sink.tracking_uri)
    history = client.get_metric_history(sink.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(s, 1.0 / s) for s in range(1, 6)]
    assert [m.value for m in client.get_metric_history(sink.run_id, "val/acc_1")] == [0.25]
    assert client.get_metric_history(sink.run_id, "flag") == []  # a bool is a record flag, not a metric
    run = client.get_run(sink.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.lr"] == "0.0003" and run.data.params["optimizer.betas"] == "[0.9, 0.95]"

    # Resuming the same run directory continues the same MLflow run.
    again = run_sink(MlflowSink(), run_dir, records(range(6, 8), val_every=100), config={**CONFIG, "max_steps": 7})
    assert again.run_id == sink.run_id
    assert [m.step for m in client.get_metric_history(sink.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6, 7]
    assert client.get_run(sink.run_id).data.params["max_steps"] == "7"


def test_mlflow_key_is_always_legal():
    assert mlflow_key("train/loss") == "train/loss"
    assert mlflow_key("val/acc@1") == "val/acc_1"
    assert mlflow_key("/a//b/../c/") == "a/b/c"
    assert mlflow_key("x:y") == "x_y"
    assert mlflow_key("") == "_"


def test_flatten():
    assert flatten(CONFIG) == {"seed": 0, "optimizer.name": "adamw", "optimizer.lr": 3e-4,
                               "optimizer.betas": [0.9, 0.95], "model_args": {}}


# ---- factory ---------------------------------------------------------------------------------

def test_make_sink_names_and_errors(monkeypatch):
    assert isinstance(make_sink("csv"), CsvSink)
    assert isinstance(make_sink("MLflow", experiment="x"), MlflowSink)
    with pytest.raises(SinkError, match="unknown sink 'neptune'.*csv, mlflow, tensorboard, wandb"):
        make_sink("neptune")
    with pytest.raises(SinkError, match="sink 'csv'"):
        make_sink("csv", tracking_uri="x")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real_find_spec(n, *a))
    with pytest.raises(SinkError, match=r"pip install trainforge\[tensorboard\]"):
        make_sink("tensorboard")
    assert issubclass(SinkError, ValueError)


@needs_tb
def test_tensorboard_gets_hparams_with_the_final_metrics(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2
    run_sink(TensorBoardSink(), tmp_path, records())
    content = read_tb(tmp_path / "tensorboard").PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(CONFIG["optimizer"]["lr"])
    assert "run_dir" not in start.hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {"train/loss", "val/loss"} <= {m.name.tag for m in experiment.metric_infos}


# ---- Weights & Biases ------------------------------------------------------------------------

needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")


@needs_wandb
def test_wandb_offline_writes_its_run_files_in_the_run_dir(tmp_path, monkeypatch):
    """Offline (no network): a real fit with `sinks: [wandb]` leaves wandb's run file, holding the
    metric names and the config, under run_dir/wandb/."""
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)
    from helpers import quiet_cfg, tiny_data, tiny_mlp
    from trainforge import TrainConfig, Trainer
    x, y = tiny_data(n=32)
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=2, batch_size=8, log={"sinks": ["wandb"], "every_steps": 2,
                                                                                         "progress": False}))
    Trainer(tiny_mlp(), cfg).fit((x, y), (x, y))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    data = runs[0].read_bytes()
    assert b"train/loss" in data and b"val/accuracy" in data and b"max_epochs" in data


def test_wandb_mode_is_checked_at_the_door(tmp_path):
    from trainforge.config import ConfigError, TrainConfig
    with pytest.raises(ConfigError, match="log.wandb_mode"):
        TrainConfig.from_dict({"log": {"wandb_mode": "cloud"}})
