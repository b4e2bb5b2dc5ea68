"""Milestones: recorded once with the exact step, epoch and wall time; null when not reached; kept
across a resume (the clock included); a milestone can stop the run; bad config names the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import PreemptAt, quiet_cfg, tiny_data, tiny_mlp
from trainforge import Callback, Preempted, TrainConfig, Trainer
from trainforge.callbacks import Milestones
from trainforge.config import ConfigError


class ScriptedMetric(Callback):
    """Records a fake validation metric: ``values[i]`` at the i-th validation."""

    def __init__(self, values, name="val/score"):
        self.values, self.name, self.calls = list(values), name, 0

    def on_validation_end(self, trainer):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        trainer.state.metrics[self.name] = value
        trainer.state.record(self.name, trainer.state.counters.step, value)


def cfg(tmp_path, name="run", **fields):
    base = {"max_epochs": 6, "batch_size": 16, "optimizer": {"lr": 1e-3}, "log": {"every_steps": 2},
            "checkpoint": {"every_steps": 3}}
    data = quiet_cfg(tmp_path, **{**base, **fields})
    data["run_dir"] = str(tmp_path / name)
    return TrainConfig.from_dict(data)


def result_json(run_dir) -> dict:
    return json.loads((Path(run_dir) / "result.json").read_text())


def test_recorded_once_at_the_first_step_reached_and_null_when_not(tmp_path):
    x, y = tiny_data(64)  # 4 steps per epoch
    c = cfg(tmp_path, milestones={"val/score": 0.5, "val/accuracy": 2.0, "val/loss": "<= 1e6"})
    spy = ScriptedMetric([0.1, 0.3, 0.6, 0.4, 0.9, 0.95])
    result = Trainer(tiny_mlp(), c, callbacks=[spy]).fit((x, y), (x, y))
    ms = result_json(c.run_dir)["milestones"]
    assert result.extra["milestones"] == ms
    assert ms["val/score"]["step"] == 12 and ms["val/score"]["epoch"] == 2  # third validation, 0-based epoch 2
    assert ms["val/score"]["threshold"] == 0.5 and ms["val/score"]["op"] == ">="
    assert 0 < ms["val/score"]["wall_time"] < 60
    assert ms["val/accuracy"] is None
    assert ms["val/loss"]["step"] == 4 and ms["val/loss"]["op"] == "<="
    assert result.stopped_reason == "max_epochs reached (6)"


def test_a_metric_the_run_never_produces_is_null_with_a_warning(tmp_path):
    x, y = tiny_data(64)
    c = cfg(tmp_path, max_epochs=1, milestones={"val/typo": 0.5})
    with pytest.warns(UserWarning, match="'val/typo' is not produced"):
        result = Trainer(tiny_mlp(), c).fit((x, y), (x, y))
    assert result.extra["milestones"] == {"val/typo": None}


def test_per_step_curve_gives_the_exact_step(tmp_path):
    x, y = tiny_data(64)
    c = cfg(tmp_path, milestones={"train/loss": "<= 100"}, log={"every_steps": 4})
    result = Trainer(tiny_mlp(), c).fit((x, y))
    assert result.extra["milestones"]["train/loss"]["step"] == 1  # read at the step-4 log, step 1 recorded


def test_stop_on_milestone_ends_the_run(tmp_path):
    x, y = tiny_data(64)
    c = cfg(tmp_path, milestones={"val/score": 0.5}, stop_on_milestone="val/score")
    result = Trainer(tiny_mlp(), c, callbacks=[ScriptedMetric([0.1, 0.7])]).fit((x, y), (x, y))
    assert result.stopped_reason == "milestone reached: val/score >= 0.5 at step 8"
    assert result.summary["steps"] == 8
    assert result_json(c.run_dir)["milestones"]["val/score"]["step"] == 8


def test_milestones_survive_a_resume_with_the_clock(tmp_path):
    x, y = tiny_data(64)
    c = cfg(tmp_path, milestones={"val/score": 0.5, "val/late": 0.5})
    values = [0.1, 0.6, 0.2, 0.2, 0.2, 0.2]
    with pytest.raises(Preempted):  # preempted mid epoch 3, after the milestone at step 8
        Trainer(tiny_mlp(), c, callbacks=[ScriptedMetric(values), ScriptedMetric([0, 0, 0, 0, 1], "val/late"),
                                          PreemptAt(10)]).fit((x, y), (x, y))
    first = result_json(c.run_dir)["milestones"]
    assert first["val/score"]["step"] == 8 and first["val/late"] is None
    # The resumed run's scripted metric never reaches 0.5 again: the milestone must come from the checkpoint.
    late = ScriptedMetric([0, 0, 1], "val/late")  # validations at steps 12, 16, 20 after the resume
    result = Trainer(tiny_mlp(), c, callbacks=[ScriptedMetric([0.2]), late]).fit((x, y), (x, y),
                                                                                   resume_from="latest")
    ms = result.extra["milestones"]
    assert ms["val/score"] == first["val/score"]
    assert ms["val/late"]["step"] == 20
    assert ms["val/late"]["wall_time"] >= first["val/score"]["wall_time"]


def test_milestone_callback_state_round_trip():
    m = Milestones({"val/accuracy": 0.9}, stop_on="val/accuracy")
    m.reached["val/accuracy"] = {"threshold": 0.9, "op": ">=", "step": 5, "epoch": 0, "wall_time": 1.5}
    m.elapsed_before = 3.0
    other = Milestones({"val/accuracy": 0.9})
    other.load_state_dict(m.state_dict())
    assert other.reached == m.reached and other.wall_time() == pytest.approx(3.0)
    with pytest.raises(ValueError):
        Milestones({"val/accuracy": 0.9}, stop_on="val/loss")


@pytest.mark.parametrize("fields,match", [
    ({"milestones": {"val/accuracy": float("nan")}}, "milestones"),
    ({"milestones": {"val/accuracy": "about 0.9"}}, "milestones"),
    ({"milestones": {"val/accuracy": [0.9]}}, "milestones"),
    ({"milestones": {"val/accuracy": 0.9}, "stop_on_milestone": "val/loss"}, "stop_on_milestone"),
    ({"stop_on_milestone": "val/accuracy"}, "stop_on_milestone"),
    ({"milestones": {"val/accuracy": 0.9}, "stop_on_milestone": []}, "stop_on_milestone"),
])
def test_bad_milestone_config_names_the_field(fields, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(fields)


def test_report_marks_milestones_and_uses_a_log_step_axis_for_runs_of_very_different_length(tmp_path):
    from test_report import fake_run
    from trainforge.report import build_figure, load_run
    long, short = fake_run(tmp_path / "long", steps=2000, epochs=20), fake_run(tmp_path / "short", steps=100, epochs=10)
    for d, step in ((long, 1500), (short, 80)):
        result = result_json(d)
        result["milestones"] = {"val/accuracy": {"threshold": 0.95, "op": ">=", "step": step, "epoch": 3,
                                                 "wall_time": 1.0}, "val/loss": None}
        (d / "result.json").write_text(json.dumps(result))
    runs = [load_run(long), load_run(short)]
    fig = build_figure(runs)
    marked = [ax for ax in fig.axes if any(line.get_gid() == "milestone" for line in ax.lines)]
    assert len(marked) == 1 and marked[0].get_xscale() == "log"
    labels = [t.get_text() for t in marked[0].get_legend().get_texts()]
    assert "long: val/accuracy >= 0.95 at step 1,500" in labels
    assert all(ax.get_xscale() == "linear" for ax in build_figure(runs, log_steps=False).axes)
    assert all(ax.get_xscale() == "linear" for ax in build_figure([runs[0]]).axes if ax.get_visible())
