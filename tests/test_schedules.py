"""Plateau and early-stopping patience (pinned to the evaluation at which each acts), and the
sequence schedule as a config reaches it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from trainforge.callbacks.control import EarlyStopping
from trainforge.config import ConfigError, TrainConfig
from trainforge.optim.schedules import ReduceOnPlateau, build_schedule, constant, linear, sequence


def scales(plateau: ReduceOnPlateau, values: list[float]) -> list[float]:
    out = []
    for v in values:
        plateau.observe(v)
        out.append(plateau(step=0))
    return out


# --------------------------------------------------------------------------- ReduceOnPlateau
def test_plateau_reduces_at_bad_evaluation_patience_plus_one_like_pytorch():
    """patience=2: two bad evaluations are tolerated, the third reduces (num_bad_epochs > patience)."""
    got = scales(ReduceOnPlateau(patience=2, factor=0.5), [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    #                            eval:  1 sets best, 2-3 tolerated, 4 reduces, 5-6 tolerated, 7 reduces
    assert got == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_plateau_matches_torch_reduce_lr_on_plateau():
    values = [5.0, 4.0, 4.5, 4.2, 4.1, 3.0, 3.5, 3.5, 3.5, 3.5, 3.5, 3.5]
    ours = ReduceOnPlateau(patience=1, factor=0.5, threshold=1e-4)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1,
                                                        threshold=1e-4, threshold_mode="abs")
    for v in values:
        ours.observe(v)
        theirs.step(v)
        assert ours(0) == pytest.approx(opt.param_groups[0]["lr"]), v


def test_plateau_patience_zero_reduces_at_every_bad_evaluation_and_improvement_resets():
    got = scales(ReduceOnPlateau(patience=0, factor=0.5), [3.0, 3.0, 2.0, 2.5, 1.0])
    assert got == [1.0, 0.5, 0.5, 0.25, 0.25]
    got = scales(ReduceOnPlateau(patience=1, factor=0.5), [3.0, 3.0, 2.0, 2.0, 2.0])
    assert got == [1.0, 1.0, 1.0, 1.0, 0.5]  # the improvement at eval 3 restarted the count


def test_plateau_threshold_and_floor():
    got = scales(ReduceOnPlateau(patience=0, factor=0.1, threshold=0.5, min_lr_ratio=0.05), [1.0, 0.6, 0.4, 0.4, 0.4])
    # 0.6 is not below 1.0 - 0.5: bad; 0.4 is: an improvement; then the floor holds the scale at 0.05
    assert got == [1.0, 0.1, 0.1, 0.05, 0.05]


def test_plateau_state_dict_round_trip_continues_identically():
    values = [2.0, 2.0, 1.0, 1.5, 1.5, 1.5, 1.5, 1.5]
    whole = ReduceOnPlateau(patience=2, factor=0.5)
    expected = scales(whole, values)
    first = ReduceOnPlateau(patience=2, factor=0.5)
    head = scales(first, values[:4])
    resumed = ReduceOnPlateau(patience=2, factor=0.5)
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict() == {"scale": 1.0, "best": 1.0, "bad_evals": 1}
    assert head + scales(resumed, values[4:]) == expected
    assert whole.state_dict() == resumed.state_dict()


# --------------------------------------------------------------------------- EarlyStopping
class FakeTrainer:
    def __init__(self):
        self.state = SimpleNamespace(metrics={})
        self.stopped_at: int | None = None
        self.evals = 0

    def stop(self, reason: str, **kw) -> None:
        if self.stopped_at is None:
            self.stopped_at = self.evals

    def evaluate(self, cb: EarlyStopping, value: float) -> None:
        self.evals += 1
        self.state.metrics = {"val/loss": value}
        cb.on_validation_end(self)


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_early_stopping_stops_at_bad_evaluation_patience_like_keras_and_lightning(patience):
    trainer, cb = FakeTrainer(), EarlyStopping(monitor="val/loss", patience=patience)
    for v in [1.0] + [1.0] * 10:  # the first evaluation sets the best; every later one is bad
        trainer.evaluate(cb, v)
        if trainer.stopped_at:
            break
    assert trainer.stopped_at == 1 + patience


def test_early_stopping_min_delta_mode_and_reset():
    trainer, cb = FakeTrainer(), EarlyStopping(monitor="val/acc", mode="max", patience=2, min_delta=0.1)
    for v in [0.5, 0.55, 0.7, 0.75]:  # 0.55: bad (not > 0.6); 0.7: improves, resets; 0.75: bad
        trainer.state.metrics = {"val/acc": v}
        cb.on_validation_end(trainer)
    assert (cb.best, cb.bad_evals, trainer.stopped_at) == (0.7, 1, None)
    cb.on_validation_end(trainer)
    assert trainer.stopped_at is not None  # second bad evaluation in a row


def test_plateau_and_early_stopping_count_the_same_evaluations():
    """Same patience, same values, same count: early stopping acts at bad evaluation p, the plateau at p + 1."""
    trainer, cb, plateau = FakeTrainer(), EarlyStopping(patience=2), ReduceOnPlateau(patience=2)
    counts, acted = [], []
    for _ in range(4):
        trainer.evaluate(cb, 1.0)
        plateau.observe(1.0)
        counts.append((cb.bad_evals, plateau.bad_evals))
        acted.append((trainer.stopped_at is not None, plateau.scale < 1.0))
    assert counts[:3] == [(0, 0), (1, 1), (2, 2)]
    assert acted == [(False, False), (False, False), (True, False), (True, True)]


# --------------------------------------------------------------------------- sequence
def test_sequence_runs_each_part_from_its_own_start():
    f = sequence([constant(), linear(4, 0, 0.0)], [2])
    assert [f(s) for s in range(7)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match="one boundary fewer"):
        sequence([constant()], [3])


def test_sequence_from_the_config():
    cfg = TrainConfig.from_dict({"max_steps": 10, "schedule": {"name": "sequence", "schedules": [
        {"name": "linear", "warmup_steps": 3, "min_lr_ratio": 1.0, "total_steps": 3},  # warmup only
        {"name": "linear", "warmup_steps": 0, "min_lr_ratio": 0.0},                    # decay to the end
    ]}})
    f = build_schedule(cfg.schedule, total_steps=10)
    assert [round(f(s), 4) for s in range(11)] == [0.25, 0.5, 0.75, 1.0, 0.8571, 0.7143, 0.5714, 0.4286, 0.2857,
                                                     0.1429, 0.0]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # config.yaml round trip


@pytest.mark.parametrize("schedule, message", [
    ({"name": "sequence"}, "needs schedules"),
    ({"name": "sequence", "schedules": [{"name": "constant"}, {"name": "linear"}]}, r"schedules\[0\] needs total_steps"),
    ({"name": "sequence", "schedules": [{"name": "plateau", "total_steps": 5}]}, "cannot be in a sequence"),
    ({"name": "linear", "schedules": [{"name": "constant"}]}, "name: sequence only"),
])
def test_sequence_config_errors(schedule, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({"max_steps": 10, "schedule": schedule})


def test_plateau_counts_nan_as_no_improvement():
    p = ReduceOnPlateau(patience=0, factor=0.5)
    assert scales(p, [math.nan] * 3) == [0.5, 0.25, 0.125]  # as torch: NaN < best is False
    assert p.best == math.inf
