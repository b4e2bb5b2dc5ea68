"""Bad steps and odd data: NaN under skip and halt, empty data, no validation, non-finite weights."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from helpers import quiet_cfg, tiny_data, tiny_mlp
from trainforge import Callback, NonFiniteError, Phase, TrainConfig, Trainer


class NanAt(nn.Module):
    """Wraps a model; its output turns NaN on chosen training forward calls (counted from 1)."""

    def __init__(self, inner, bad_calls):
        super().__init__()
        self.inner, self.bad_calls, self.calls = inner, set(bad_calls), 0

    def forward(self, x):  # counts training calls (the sanity pass runs in eval mode)
        self.calls += self.training
        out = self.inner(x)
        return out * float("nan") if self.training and self.calls in self.bad_calls else out


def cfg_for(tmp_path, **fields):
    return TrainConfig.from_dict(quiet_cfg(tmp_path, **{"max_epochs": 1, "batch_size": 8, **fields}))


def test_nan_loss_skip_drops_the_step_and_counts_it(tmp_path):
    x, y = tiny_data(n=64)
    model = NanAt(tiny_mlp(), bad_calls={3, 5})
    with pytest.warns(UserWarning, match="non-finite loss at step 2.*skipped"):
        result = Trainer(model, cfg_for(tmp_path, grad={"non_finite": "skip"})).fit((x, y))
    assert result.summary["skipped_steps"] == 2
    # 8 optimizer steps taken (the schedule's clock), 2 of them dropped on the device: 6 updates applied
    assert result.summary["steps"] == 8 and result.summary["weight_version"] == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_loss_halt_stops_with_error_and_keeps_run_dir(tmp_path):
    x, y = tiny_data(n=64)
    trainer = Trainer(NanAt(tiny_mlp(), bad_calls={4}), cfg_for(tmp_path, grad={"non_finite": "halt"}))
    with pytest.raises(NonFiniteError, match="non-finite loss at step 3.*halting"):
        trainer.fit((x, y))
    assert trainer.phase == Phase.ERROR
    run_dir = tmp_path / "run"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["phase"] == "ERROR" and "NonFiniteError" in result["error"]
    assert (run_dir / "config.yaml").exists() and (run_dir / "metrics.jsonl").exists()
    assert result["summary"]["steps"] == 3


def test_nan_gradient_without_nan_loss_is_caught(tmp_path):
    x, y = tiny_data(n=32)
    model = tiny_mlp()

    class PoisonGrad(Callback):
        done = False

        def on_after_backward(self, trainer):
            if trainer.state.counters.step == 1 and not self.done:
                self.done = True
                next(trainer.model.parameters()).grad[0, 0] = float("inf")

    with pytest.warns(UserWarning, match="non-finite gradient norm at step 1"):
        result = Trainer(model, cfg_for(tmp_path), callbacks=[PoisonGrad()]).fit((x, y))
    assert result.summary["skipped_steps"] == 1


def test_non_finite_weights_after_a_step_are_detected(tmp_path):
    x, y = tiny_data(n=32)

    class Corrupt(Callback):
        def on_after_optimizer_step(self, trainer):
            if trainer.state.counters.step == 2:
                with torch.no_grad():
                    next(trainer.model.parameters())[0, 0] = float("nan")

    trainer = Trainer(tiny_mlp(), cfg_for(tmp_path, grad={"non_finite": "halt"}, log={"every_steps": 2}),
                      callbacks=[Corrupt()])
    with pytest.raises(NonFiniteError):
        trainer.fit((x, y))


class Empty(Dataset):
    def __len__(self):
        return 0

    def __getitem__(self, i):
        raise IndexError(i)


def test_empty_dataset_warns_and_finishes(tmp_path):
    with pytest.warns(UserWarning, match="training data is empty"):
        result = Trainer(tiny_mlp(), cfg_for(tmp_path, max_epochs=3)).fit(Empty())
    assert result.summary["steps"] == 0 and result.stopped_reason == "training data is empty"


def test_empty_batch_is_skipped_with_warning(tmp_path):
    x, y = tiny_data(n=16)
    batches = [(x[:8], y[:8]), (x[:0], y[:0]), (x[8:], y[8:])]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    with pytest.warns(UserWarning, match="empty batch 1"):
        result = Trainer(tiny_mlp(), cfg_for(tmp_path)).fit(loader)
    assert result.summary["steps"] == 2 and result.summary["skipped_batches"] == 1


def test_runs_without_validation_data(tmp_path):
    x, y = tiny_data(n=32)
    result = Trainer(tiny_mlp(), cfg_for(tmp_path, max_epochs=2)).fit((x, y))
    assert "val/loss" not in result.history and len(result.history["train/loss"]) == 8


def test_validate_alone_and_without_data(tmp_path):
    x, y = tiny_data(n=32)
    trainer = Trainer(tiny_mlp(), cfg_for(tmp_path))
    metrics = trainer.validate((x, y))
    assert set(metrics) == {"val/loss", "val/accuracy", "val/f1"} and 0 <= metrics["val/accuracy"] <= 1
    with pytest.raises(ValueError, match="needs validation data"):
        trainer.validate()


def test_bad_training_data_type_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="cannot train on a str"):
        Trainer(tiny_mlp(), cfg_for(tmp_path)).fit("data.csv")
    with pytest.raises(ValueError, match="same first dimension"):
        Trainer(tiny_mlp(), cfg_for(tmp_path)).fit((torch.zeros(4, 6), torch.zeros(5)))
