"""Tasks (LM, regression, callable), result.json and metrics.jsonl contents, log levels, precision."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import quiet_cfg, tiny_data, tiny_mlp
from trainforge import TrainConfig, Trainer
from trainforge.tasks import Classification, LanguageModel, make_task


def cfg_for(tmp_path, **fields):
    return TrainConfig.from_dict(quiet_cfg(tmp_path, **{"max_epochs": 1, "batch_size": 8, **fields}))


class TinyLM(nn.Module):
    def __init__(self, vocab=11, width=16):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, width), nn.Linear(width, vocab)

    def forward(self, idx):
        return self.head(self.emb(idx))


def test_language_model_task_learns_and_reports_tokens(tmp_path):
    torch.manual_seed(0)
    seq = torch.arange(11).repeat(40)  # a deterministic cycle: next token = current + 1
    windows = torch.stack([seq[i:i + 9] for i in range(0, 300)])
    result = Trainer(TinyLM(), cfg_for(tmp_path, max_epochs=3, task="language_model", optimizer={"lr": 3e-2},
                                       log={"every_steps": 5})).fit(windows, windows[:32])
    assert result.history["val/loss"][-1] < 0.5 < result.history["train/loss"][0]
    assert result.summary["tokens_seen"] == 3 * 300 * 8
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("throughput/tokens_per_s" in l for l in lines if l["kind"] == "train")


def test_language_model_rejects_bad_batch_shape():
    with pytest.raises(ValueError, match=r"\[B, T\+1\]"):
        LanguageModel().train_step(TinyLM(), torch.zeros(4, dtype=torch.long))


def test_classification_metrics_are_exact():
    task = Classification()
    logits = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0], [0, 0, 2.0]])
    model = lambda x: x  # noqa: E731
    sums = task.eval_step(model, (logits, torch.tensor([0, 1, 2, 2])))
    out = task.summarize(sums)
    assert out["val/accuracy"] == pytest.approx(0.75)
    # per class F1: c0 1.0, c1 2/3 (p=.5, r=1), c2 2/3 (p=1, r=.5)
    assert out["val/f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert out["val/loss"] == pytest.approx(F.cross_entropy(logits, torch.tensor([0, 1, 2, 2])).item())


def test_regression_task(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(128, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    result = Trainer(nn.Linear(3, 1), cfg_for(tmp_path, max_epochs=30, task="regression", optimizer={"lr": 5e-2},
                                              schedule={"name": "constant"})).fit((x, y.unsqueeze(1)), (x, y.unsqueeze(1)))
    assert result.history["val/loss"][-1] < 0.01 and "val/mae" in result.history


def test_callable_task_with_metrics(tmp_path):
    def my_task(model, batch):
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits, y), {"my_acc": (logits.argmax(-1) == y).float().mean()}

    x, y = tiny_data(n=32)
    result = Trainer(tiny_mlp(), cfg_for(tmp_path), task=my_task).fit((x, y), (x, y))
    assert "val/my_acc" in result.history and "val/loss" in result.history


def test_task_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        make_task("segmentation")
    with pytest.raises(ValueError, match="cannot import module"):
        make_task("no_such_module_xyz:fn")
    with pytest.raises(ValueError, match="expected a batch of"):
        Classification().train_step(tiny_mlp(), {"a": torch.zeros(2, 6)})


def test_result_json_and_metrics_jsonl_contract(tmp_path):
    x, y = tiny_data(n=64)
    result = Trainer(tiny_mlp(), cfg_for(tmp_path, max_epochs=2, log={"every_steps": 4})).fit((x, y), (x, y))
    run = tmp_path / "run"
    data = json.loads((run / "result.json").read_text())
    assert data["stopped_reason"] == "max_epochs reached (2)" == result.stopped_reason
    assert data["final_checkpoint"] and data["final_checkpoint"].startswith(str(run / "checkpoints"))
    loss = data["curves"]["train/loss"]
    assert loss["step"] == list(range(1, 17)) and len(loss["value"]) == 16  # every step
    assert data["curves"]["val/accuracy"]["step"] == [8, 16]               # every epoch
    assert data["summary"]["steps"] == 16 and "val/loss" in data["summary"]["best"]
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["kind"] == "train"] == [4, 8, 12, 16]
    assert [l["kind"] for l in lines].count("epoch") == 2 and [l["kind"] for l in lines].count("val") == 2
    train = next(l for l in lines if l["kind"] == "train")
    for key in ("train/loss", "lr", "grad/norm", "throughput/samples_per_s", "throughput/batches_per_s", "time/step",
                "weight_version"):
        assert key in train, key
    assert (run / "config.yaml").exists()


@pytest.mark.parametrize("level,present,absent", [
    ("minimal", {"train/loss", "lr"}, {"grad/norm", "grad/max"}),
    ("standard", {"grad/norm", "throughput/samples_per_s"}, {"grad/max", "time/data_wait"}),
    ("verbose", {"grad/max", "grad/min", "time/data_wait", "memory/rss_mb"}, set()),
])
def test_log_levels(tmp_path, level, present, absent):
    x, y = tiny_data(n=32)
    Trainer(tiny_mlp(), cfg_for(tmp_path, log={"level": level, "every_steps": 2})).fit((x, y))
    train = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [l for l in train if l["kind"] == "train"]
    assert len(train) == 2
    assert present <= set(train[0]) and not (absent & set(train[0]))


def test_grad_extremes_are_right(tmp_path):
    x, y = tiny_data(n=8)
    model = tiny_mlp()
    trainer = Trainer(model, cfg_for(tmp_path, max_steps=1, log={"level": "verbose", "every_steps": 1}))
    seen = {}

    from trainforge import Callback

    class Grab(Callback):
        def on_before_optimizer_step(self, t):
            grads = torch.cat([p.grad.abs().flatten() for p in t.model.parameters()])
            seen["max"], seen["min"] = grads.max().item(), grads.min().item()

    trainer.add_callback(Grab())
    trainer.fit((x, y))
    rec = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][0]
    assert rec["grad/max"] == pytest.approx(seen["max"]) and rec["grad/min"] == pytest.approx(seen["min"])


def test_bf16_autocast_on_cpu_trains(tmp_path):
    x, y = tiny_data(n=32)
    result = Trainer(tiny_mlp(), cfg_for(tmp_path, max_epochs=2, precision="bf16-mixed")).fit((x, y), (x, y))
    assert result.summary["steps"] == 8 and all(torch.isfinite(torch.tensor(result.history["train/loss"])))


def test_early_stopping_stops_after_patience(tmp_path):
    x, y = tiny_data(n=32)
    result = Trainer(tiny_mlp(), cfg_for(tmp_path, max_epochs=50, optimizer={"lr": 1e-9}, schedule={"name": "constant"},
                                         early_stopping={"monitor": "val/loss", "patience": 2, "min_delta": 0.01})
                     ).fit((x, y), (x, y))
    assert result.summary["epochs_completed"] == 3
    assert result.stopped_reason.startswith("early stopping: val/loss did not improve")


def test_gate_pass_pins_and_stops(tmp_path):
    x, y = tiny_data(n=32)
    result = Trainer(tiny_mlp(), cfg_for(tmp_path, max_epochs=50, gate={"val/loss": "< 100", "val/accuracy": ">= 0"})
                     ).fit((x, y), (x, y))
    assert result.gate_passed is True and result.summary["epochs_completed"] == 1
    assert result.stopped_reason.startswith("gate passed at step 4")
    data = json.loads((tmp_path / "run" / "result.json").read_text())
    assert data["gate_passed"] is True and data["gate"] == {"val/loss": "< 100", "val/accuracy": ">= 0"}
    manifest = json.loads((tmp_path / "run" / "checkpoints" / "step-000000004" / "MANIFEST.json").read_text())
    assert manifest["pinned"] is True


def test_gate_failure_is_recorded(tmp_path):
    x, y = tiny_data(n=32)
    result = Trainer(tiny_mlp(), cfg_for(tmp_path, max_epochs=2, gate={"val/accuracy": "> 1.5"})).fit((x, y), (x, y))
    data = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result.gate_passed is False and data["gate_passed"] is False
    assert "budget ended before the gate passed: val/accuracy" in data["gate_failure_reason"]
    assert set(data["gate_values"]) == {"val/accuracy"}


def test_filter_and_cache_counts_reach_metrics_and_summary(tmp_path):
    from trainforge.data import CachedDataset, FilteredDataset
    from trainforge.data.loader import TensorData
    x, y = tiny_data(n=64)
    base = TensorData(x, y)
    data = CachedDataset(FilteredDataset(base, lambda sample: int(sample[1]) != 0), capacity=8)
    dropped = int((y == 0).sum())
    result = Trainer(tiny_mlp(), cfg_for(tmp_path, log={"every_steps": 2})).fit(data)
    assert result.summary["data"]["data/dropped"] == dropped
    assert result.summary["data"]["cache/misses"] > 0
    train = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert "cache/hits" in train[0] and train[0]["data/dropped"] == dropped


def test_interval_rates_exclude_validation_and_checkpoint_time(monkeypatch):
    from trainforge import metrics
    meter = metrics.IntervalMeter()
    meter.started = 100.0
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: 110.0)  # flushed 10 s later
    for step in range(5):
        meter.add_batch(samples=8, tokens=0)
        meter.add_step(step + 1, torch.tensor(1.0))
    meter.excluded = 6.0  # e.g. a validation inside the interval
    rates = meter.flush().rates
    assert rates["throughput/samples_per_s"] == pytest.approx(40 / 4.0)
    assert rates["time/step"] == pytest.approx(4.0 / 5)


def test_fit_takes_a_data_spec_directly_or_from_the_config(tmp_path):
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    spec = {"path": str(tmp_path / "d.npz"), "val_fraction": 0.25}
    result = Trainer(tiny_mlp(), cfg_for(tmp_path)).fit(spec)
    assert result.summary["samples_seen"] == 30 and "val/accuracy" in result.history
    result = Trainer(tiny_mlp(), cfg_for(tmp_path, data=spec)).fit()
    assert result.summary["samples_seen"] == 30
    with pytest.raises(ValueError, match="needs training data"):
        Trainer(tiny_mlp(), cfg_for(tmp_path)).fit()
    from trainforge.data import DataError
    with pytest.raises(DataError, match="nope.npz"):
        Trainer(tiny_mlp(), cfg_for(tmp_path)).fit({"path": str(tmp_path / "nope.npz")})
