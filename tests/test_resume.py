"""Exact resume in process: mid-epoch, with accumulation, dropout, workers, validation and async saves;
compatibility checks; corrupt-checkpoint fallback; rollback on NaN."""


import pytest
import torch
from torch import nn

from helpers import PreemptAt, quiet_cfg
from tiny_project import build_data, build_model
from trainforge import NonFiniteError, Preempted, TrainConfig, Trainer
from trainforge.checkpoint import CheckpointManager
from trainforge.snapshot import ResumeError


def make_cfg(tmp_path, name="run", **fields):
    base = {"max_epochs": 3, "batch_size": 16, "optimizer": {"lr": 3e-3}, "checkpoint": {"every_steps": 5},
            "log": {"every_steps": 4}}
    merged = {**base, **fields}
    cfg = quiet_cfg(tmp_path, **merged)
    cfg["run_dir"] = str(tmp_path / name)
    return TrainConfig.from_dict(cfg)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def run_straight(tmp_path, **fields):
    train, val = build_data()
    model = build_model()
    result = Trainer(model, make_cfg(tmp_path, "straight", **fields)).fit(train, val)
    return weights(model), result


def run_interrupted(tmp_path, stops, **fields):
    train, val = build_data()
    cfg = make_cfg(tmp_path, "interrupted", **fields)
    for step in stops:
        with pytest.raises(Preempted) as exc:
            Trainer(build_model(), cfg, callbacks=[PreemptAt(step)]).fit(train, val, resume_from="latest")
        assert exc.value.code == 75 and "trainforge resume" in exc.value.message
    model = build_model()
    result = Trainer(model, cfg).fit(train, val, resume_from="latest")
    return weights(model), result


@pytest.mark.parametrize("fields", [
    {},
    {"grad": {"accumulate": 3, "clip_norm": 0.5}},
    {"num_workers": 2},
    {"validation": {"every_steps": 4, "every_epochs": None}, "checkpoint": {"async_save": True, "every_steps": 5}},
], ids=["plain", "accumulate", "workers", "step-validation-async"])
def test_preempted_and_resumed_run_is_bit_identical(tmp_path, fields):
    # 192 samples / 16 = 12 batches per epoch: stops at steps 5 (mid epoch 1) and 17 (mid epoch 2)
    stops = (2, 5) if fields.get("grad") else (5, 17)
    ref, ref_result = run_straight(tmp_path, **fields)
    got, result = run_interrupted(tmp_path, stops, **fields)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert result.history["train/loss"] == ref_result.history["train/loss"]
    assert result.history.get("val/loss") == ref_result.history.get("val/loss")
    assert result.history["train/epoch_loss"] == ref_result.history["train/epoch_loss"]


def test_resume_without_checkpoint_starts_fresh(tmp_path, capsys):
    train, val = build_data()
    Trainer(build_model(), make_cfg(tmp_path, max_epochs=1)).fit(train, resume_from="latest")
    assert "starting fresh" in capsys.readouterr().err


def test_resume_of_finished_run_is_a_noop_that_says_so(tmp_path, capsys):
    train, val = build_data()
    cfg = make_cfg(tmp_path, max_epochs=1)
    Trainer(build_model(), cfg).fit(train)
    model = build_model()
    before = weights(model)
    result = Trainer(model, cfg).fit(train, resume_from="latest")
    assert "already finished" in capsys.readouterr().err
    assert result.summary["steps"] == 12
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights were loaded


def test_raised_budget_continues_a_finished_run(tmp_path):
    train, _ = build_data()
    Trainer(build_model(), make_cfg(tmp_path, max_epochs=1)).fit(train)
    result = Trainer(build_model(), make_cfg(tmp_path, max_epochs=2)).fit(train, resume_from="latest")
    assert result.summary["steps"] == 24


def test_different_architecture_fails_listing_differences(tmp_path):
    train, _ = build_data()
    Trainer(build_model(), make_cfg(tmp_path, max_epochs=1)).fit(train)
    with pytest.raises(ResumeError) as err:
        Trainer(build_model(width=48), make_cfg(tmp_path, max_epochs=2, model_args={"width": 48})).fit(
            train, resume_from="latest")
    msg = str(err.value)
    assert "net.0.weight: checkpoint shape [32, 10], model shape [48, 10]" in msg and "model_args.width" in msg


def test_different_optimizer_type_fails(tmp_path):
    train, _ = build_data()
    Trainer(build_model(), make_cfg(tmp_path, max_epochs=1)).fit(train)
    with pytest.raises(ResumeError, match="optimizer type: checkpoint AdamW, run SGD"):
        Trainer(build_model(), make_cfg(tmp_path, max_epochs=2, optimizer={"name": "sgd", "lr": 0.1})).fit(
            train, resume_from="latest")


def test_changed_lr_is_allowed_and_reported(tmp_path, capsys):
    train, _ = build_data()
    Trainer(build_model(), make_cfg(tmp_path, max_epochs=1)).fit(train)
    Trainer(build_model(), make_cfg(tmp_path, max_epochs=2, optimizer={"lr": 1e-3})).fit(train, resume_from="latest")
    err = capsys.readouterr().err
    assert "optimizer.lr: 0.003 -> 0.001" in err and "max_epochs: 1 -> 2" in err


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    train, _ = build_data()
    cfg = make_cfg(tmp_path, max_epochs=1, checkpoint={"every_steps": 5, "save_last": False, "keep_last": 5})
    with pytest.raises(Preempted):
        Trainer(build_model(), cfg, callbacks=[PreemptAt(7)]).fit(train)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-000000005", "step-000000007"]
    latest = ckpts[-1] / "model.safetensors"
    data = bytearray(latest.read_bytes())
    data[-1] ^= 0xFF
    latest.write_bytes(bytes(data))
    trainer = Trainer(build_model(), make_cfg(tmp_path, max_epochs=1, checkpoint={"every_steps": 100}))
    with pytest.warns(UserWarning, match="step-000000007"):
        trainer.fit(train, resume_from="latest")
    assert trainer.last_checkpoint.endswith("step-000000012")
    loss_steps = trainer.state.history["train/loss"]["step"]
    assert loss_steps == list(range(1, 13))  # steps 6..12 were redone from step 5


def test_resume_from_explicit_path(tmp_path):
    train, _ = build_data()
    cfg = make_cfg(tmp_path, max_epochs=1, checkpoint={"every_steps": 5, "keep_last": 5})
    Trainer(build_model(), cfg).fit(train)
    trainer = Trainer(build_model(), make_cfg(tmp_path, "other", max_epochs=1))
    trainer.fit(train, resume_from=tmp_path / "run" / "checkpoints" / "step-000000010")
    assert trainer.state.history["train/loss"]["step"][-3:] == [10, 11, 12]
    with pytest.raises(Exception, match="does not exist"):
        Trainer(build_model(), cfg).fit(train, resume_from=tmp_path / "nope")


class NanModel(nn.Module):
    """Returns NaN on the forward calls listed (counted from 1 across the whole process)."""

    def __init__(self, bad):
        super().__init__()
        self.inner, self.bad, self.calls = build_model(dropout=0.0), set(bad), 0

    def forward(self, x):  # counts training calls (the sanity pass runs in eval mode)
        self.calls += self.training
        out = self.inner(x)
        return out * float("nan") if self.training and self.calls in self.bad else out


def test_rollback_restores_lowers_lr_and_finishes(tmp_path):
    train, _ = build_data()
    cfg = make_cfg(tmp_path, max_epochs=2, schedule={"name": "constant"}, checkpoint={"every_steps": 4},
                   grad={"non_finite": "rollback", "rollback_lr_factor": 0.5, "max_rollbacks": 2})
    model = NanModel(bad={10})
    trainer = Trainer(model, cfg)
    with pytest.warns(UserWarning, match=r"rolled back to step-000000008 \(step 8\), lr x0.5"):
        result = trainer.fit(train)
    assert result.summary["rollbacks"] == 1 and result.summary["skipped_batches"] == 1
    assert trainer.lr == pytest.approx(3e-3 * 0.5)
    assert result.summary["steps"] == 23  # 24 batches, the offending one skipped
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_rollback_gives_up_after_max(tmp_path):
    train, _ = build_data()
    cfg = make_cfg(tmp_path, max_epochs=2, checkpoint={"every_steps": 4},
                   grad={"non_finite": "rollback", "max_rollbacks": 1})
    # NaN at call 10, and again from call 13 on: whatever the steps redone after the first rollback
    # (the non-finite step is acted on at the log interval), the second rollback would exceed the limit.
    trainer = Trainer(NanModel(bad={10, *range(13, 40)}), cfg)
    with pytest.raises(NonFiniteError, match="gave up after 1 rollbacks"):
        trainer.fit(train)


def test_rollback_without_checkpoint_halts(tmp_path):
    train, _ = build_data()
    cfg = make_cfg(tmp_path, max_epochs=1, checkpoint={"every_steps": 100}, grad={"non_finite": "rollback"})
    with pytest.raises(NonFiniteError, match="no checkpoint to roll back to"):
        Trainer(NanModel(bad={2}), cfg).fit(train)


def test_retention_in_a_run_keeps_last_best_and_pinned(tmp_path):
    train, val = build_data()
    cfg = make_cfg(tmp_path, max_epochs=6, checkpoint={"every_epochs": 1, "every_steps": None, "keep_last": 2,
                                                       "keep_best": 1, "monitor": "val/accuracy", "mode": "max"})
    trainer = Trainer(build_model(), cfg)
    trainer.fit(train, val)
    infos = CheckpointManager(tmp_path / "run" / "checkpoints", keep_last=None).list()
    names = [i.name for i in infos]
    accs = trainer.state.history["val/accuracy"]
    best_step = accs["step"][max(range(len(accs["value"])), key=lambda i: (accs["value"][i], -i))]
    assert names[-2:] == ["step-000000060", "step-000000072"]
    assert f"step-{best_step:09d}" in names and len(names) <= 3


def test_a_resume_says_where_it_continues_and_a_preempted_fit_says_how_to_resume(tmp_path, capsys):
    train, val = build_data()
    cfg = make_cfg(tmp_path, max_epochs=2)
    with pytest.raises(Preempted):
        Trainer(build_model(), cfg, callbacks=[PreemptAt(7)]).fit(train, val)
    err = capsys.readouterr().err
    assert "preempted by SIGTERM at step 7 (epoch 1); checkpoint saved" in err
    assert f"Resume with: trainforge resume {tmp_path / 'run'}" in err
    Trainer(build_model(), cfg).fit(train, val, resume_from="latest")
    err = capsys.readouterr().err
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / 'step-000000007'} at step 7 (epoch 1, batch 7)" in err
