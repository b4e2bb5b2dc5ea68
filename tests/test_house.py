"""The house: one state registry (every plug-in resumes exactly), a sync-free step, a golden loss curve."""

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import quiet_cfg, tiny_data, tiny_mlp
from tiny_project import build_data, build_model
from trainforge import Callback, TrainConfig, Trainer
from trainforge.checkpoint import CheckpointManager, load_checkpoint
from trainforge.data.streaming import stream_dataset
from trainforge.snapshot import FORMAT

GOLDEN = Path(__file__).parent / "golden" / "tiny_mlp_losses.json"


# --------------------------------------------------------------------------- no host sync in the step
class SyncCounter:
    """Counts the calls that make the host wait for a tensor's value."""

    NAMES = ("item", "__float__", "__int__", "__bool__", "cpu", "tolist", "numpy")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(t, *a, _name=name, _original=original, **k):
                if self.active:
                    self.calls.append(_name)
                return _original(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)
        self.active = False


def test_at_most_one_host_sync_per_log_interval(tmp_path, monkeypatch):
    x, y = tiny_data(n=400)
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_steps=50, batch_size=8, grad={"clip_norm": 1.0},
                                          log={"every_steps": 10, "memory": True}, checkpoint={"enabled": False}))
    counter = SyncCounter(monkeypatch)

    class Window(Callback):  # count from the first step's start to the last step's end
        def on_train_start(self, trainer):
            counter.active = True

        def on_train_end(self, trainer):
            counter.active = False

    result = Trainer(tiny_mlp(), cfg, callbacks=[Window()]).fit((x, y))
    assert result.summary["steps"] == 50
    assert len(counter.calls) <= 5, counter.calls  # 50 steps, a log every 10: one sync each
    assert len(result.history["train/loss"]) == 50  # ... and still every step's loss


def test_the_sync_counter_can_fail(tmp_path, monkeypatch):
    """A per-step .item() in a callback shows up: the count above is not vacuous."""
    x, y = tiny_data(n=160)
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_steps=20, batch_size=8, checkpoint={"enabled": False}))
    counter = SyncCounter(monkeypatch)

    class ItemPerStep(Callback):
        def on_train_start(self, trainer):
            counter.active = True

        def on_after_optimizer_step(self, trainer):
            trainer.model[0].weight.sum().item()

    Trainer(tiny_mlp(), cfg, callbacks=[ItemPerStep()]).fit((x, y))
    assert len(counter.calls) >= 20


def test_skip_drops_the_update_exactly(tmp_path):
    """A NaN step under `skip` leaves weights and optimizer moments as if that batch never ran."""
    x, y = tiny_data(n=64)

    class NanOnCall(nn.Module):
        def __init__(self, inner, bad):
            super().__init__()
            self.inner, self.bad, self.calls = inner, bad, 0

        def forward(self, x):  # counts training calls (the sanity pass runs in eval mode)
            self.calls += self.training
            out = self.inner(x)
            return out * float("nan") if self.training and self.calls == self.bad else out

    model = NanOnCall(tiny_mlp(), bad=3)
    reference = copy.deepcopy(model.inner)
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=1, batch_size=8, shuffle=False,
                                          optimizer={"lr": 1e-2, "weight_decay": 0.0}, schedule={"name": "constant"},
                                          checkpoint={"enabled": False}))
    with pytest.warns(UserWarning, match="non-finite loss at step 2"):
        result = Trainer(model, cfg).fit((x, y))
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.0, fused=True)
    for i in range(8):
        if i == 2:
            continue  # the dropped step
        F.cross_entropy(reference(x[i * 8:(i + 1) * 8]), y[i * 8:(i + 1) * 8]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert result.summary["skipped_steps"] == 1 and result.summary["weight_version"] == 7
    for a, b in zip(model.inner.parameters(), reference.parameters()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- golden losses
def golden_run(tmp_path):
    x, y = tiny_data(n=160, seed=3)
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, seed=5, max_steps=20, batch_size=8, optimizer={"lr": 3e-2},
                                          grad={"clip_norm": 1.0}, checkpoint={"enabled": False}))
    return Trainer(tiny_mlp(seed=5), cfg).fit((x, y)).history["train/loss"]


def test_golden_losses(tmp_path):
    """A seeded tiny model's first 20 losses against a committed file (torchtitan's golden-loss test):
    any change to the loop's numerics (order of operations, schedule, sampler, optimizer) shows here.
    Regenerate with TRAINFORGE_WRITE_GOLDEN=1 only when a change is meant to alter them."""
    losses = golden_run(tmp_path)
    import os
    if os.environ.get("TRAINFORGE_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"losses": losses}, indent=1))
    expected = json.loads(GOLDEN.read_text())["losses"]
    assert len(losses) == len(expected) == 20
    assert losses == pytest.approx(expected, rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- every plug-in resumes exactly
class Crash(Callback):
    """A process dying at step ``step``: only the checkpoints on disk survive."""

    def __init__(self, step):
        self.step = step

    def on_after_optimizer_step(self, trainer):
        if trainer.state.counters.step == self.step:
            raise RuntimeError("crash")


class GradMomentum:
    """A plug-in with state that changes training: adds a running mean of past gradients to each
    gradient. Registered with one line; without it a resumed run would differ."""

    def __init__(self):
        self.mean: list[torch.Tensor] = []

    def apply(self, params):
        grads = [p.grad for p in params]
        if not self.mean:
            self.mean = [g.clone() for g in grads]
        else:
            torch._foreach_lerp_(self.mean, grads, 0.1)
        torch._foreach_add_(grads, self.mean)

    def state_dict(self):
        return {"mean": self.mean}

    def load_state_dict(self, state):
        self.mean = [t.clone() for t in state["mean"]]


class UsesGradMomentum(Callback):
    def __init__(self, plugin):
        self.plugin = plugin

    def on_after_backward(self, trainer):
        self.plugin.apply([p for p in trainer.model.parameters() if p.grad is not None])


def jsonl_stream_data(tmp_path):
    path = tmp_path / "data.jsonl"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 10, generator=g)
    with open(path, "w") as f:
        for i, row in enumerate(x.tolist()):
            f.write(json.dumps({"x": row, "y": int(i % 4), "i": i}) + "\n")
    return stream_dataset([path], filter=lambda r: r["i"] % 7 != 3)


PLUGINS = {
    "early_stopping": dict(cfg={"early_stopping": {"monitor": "val/loss", "patience": 50}}),
    "gate": dict(cfg={"gate": {"val/accuracy": "> 0.999"}}),
    # accuracy watched in mode min: it rarely "improves", so the lr drops every other evaluation
    "plateau": dict(cfg={"schedule": {"name": "plateau", "patience": 1, "factor": 0.5, "monitor": "val/accuracy"}}),
    "fp16_scaler": dict(cfg={"precision": "16-mixed"}),
    "registered_plugin": dict(callback=True),
    # ends inside the epoch of the crash: its drop count must include the drops before the crash
    "streaming_data": dict(stream=True, cfg={"max_epochs": None, "max_steps": 12, "schedule": {"name": "constant"}}),
}


def plugin_trainer(tmp_path, name, case, crash_at=None, register=True):
    cfg = {"max_epochs": 3, "batch_size": 16, "optimizer": {"lr": 3e-3}, "checkpoint": {"every_steps": 3},
           "validation": {"every_steps": 4}, "log": {"every_steps": 5}, **case.get("cfg", {})}
    cfg = TrainConfig.from_dict({**quiet_cfg(tmp_path, **cfg), "run_dir": str(tmp_path / name)})
    callbacks = [Crash(crash_at)] if crash_at else []
    if case.get("callback"):
        plugin = GradMomentum()
        callbacks.append(UsesGradMomentum(plugin))
    trainer = Trainer(build_model(), cfg, callbacks=callbacks)
    if case.get("callback") and register:
        trainer.state.register("grad_momentum", plugin)  # the one line that makes a plug-in resumable
    return trainer


def plugin_data(tmp_path, case):
    return (jsonl_stream_data(tmp_path), build_data()[1]) if case.get("stream") else build_data()


def plugin_run(tmp_path, name, case, crash_at=None, register=True):
    if crash_at:
        with pytest.raises(RuntimeError, match="crash"):
            plugin_trainer(tmp_path, name, case, crash_at, register).fit(*plugin_data(tmp_path, case))
    trainer = plugin_trainer(tmp_path, name, case, register=register)
    result = trainer.fit(*plugin_data(tmp_path, case), resume_from="latest" if crash_at else None)
    return trainer.model, result


@pytest.mark.parametrize("name", list(PLUGINS))
def test_every_plugin_with_state_resumes_bit_identically(tmp_path, name):
    case = PLUGINS[name]
    straight, r1 = plugin_run(tmp_path, "straight", case)
    resumed, r2 = plugin_run(tmp_path, "resumed", case, crash_at=8)  # mid-epoch, 2 steps after a checkpoint
    assert r1.summary["steps"] == r2.summary["steps"]
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name}: {key} differs after the resume"
    assert r1.history["train/loss"] == r2.history["train/loss"]
    assert {k: v for k, v in r1.summary.items() if k != "final"} == {k: v for k, v in r2.summary.items() if k != "final"}


def test_an_unregistered_plugin_breaks_resume(tmp_path):
    """The negative control: the same plug-in without its one register line does not resume exactly."""
    case = PLUGINS["registered_plugin"]
    straight, _ = plugin_run(tmp_path, "straight", case, register=False)
    resumed, _ = plugin_run(tmp_path, "resumed", case, crash_at=8, register=False)
    assert not all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


def test_a_streaming_run_resumed_keeps_its_drop_counts(tmp_path):
    case = PLUGINS["streaming_data"]
    _, r1 = plugin_run(tmp_path, "straight", case)
    _, r2 = plugin_run(tmp_path, "resumed", case, crash_at=8)
    assert r1.summary["data"]["data/dropped"] > 0
    assert r2.summary["data"] == r1.summary["data"]


def test_registry_refuses_a_part_without_state_dict_and_a_taken_key():
    from trainforge import TrainState
    state = TrainState()
    with pytest.raises(TypeError, match="'thing' needs state_dict"):
        state.register("thing", object())
    state.register("m", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'m' is already registered"):
        state.register("m", nn.Linear(2, 2))


def test_a_checkpoint_lacking_a_required_part_names_it(tmp_path):
    from trainforge import TrainState
    state = TrainState()
    state.register("model", nn.Linear(2, 2))
    state.register("extra", nn.Linear(2, 2))
    saved = state.state_dict()
    del saved["parts"]["extra"]
    with pytest.raises(KeyError, match="no state for extra"):
        state.load_state_dict(saved)


def test_format_1_checkpoints_still_resume(tmp_path):
    """A checkpoint written before the registry (format 1: callbacks nested, flags in meta) resumes
    to the same weights as one written today."""
    case = PLUGINS["early_stopping"]
    straight, _ = plugin_run(tmp_path, "straight", case)
    with pytest.raises(RuntimeError, match="crash"):
        plugin_trainer(tmp_path, "old", case, crash_at=8).fit(*build_data())
    ckpt_dir = tmp_path / "old" / "checkpoints"
    manager = CheckpointManager(ckpt_dir, keep_last=10)
    newest = manager.latest_valid()
    payload = load_checkpoint(newest.path)
    assert payload["meta"]["format"] == FORMAT
    tensors = dict(payload["tensors"])
    callbacks = {k.split("/", 1)[1]: tensors.pop(k) for k in list(tensors) if k.startswith("callback/")}
    state = dict(payload["meta"]["state"])
    old_meta = {**payload["meta"], "format": 1, "state": {k: v for k, v in state.items()
                                                          if k not in ("pending_validation", "skip_batches")},
                "pending_validation": state["pending_validation"], "skip_batches": state["skip_batches"]}
    old = {"model": payload["model"], "tensors": {**tensors, "callbacks": callbacks, "scaler": {}}, "meta": old_meta}
    manager.save(newest.name, old, step=newest.step, epoch=newest.epoch)
    assert load_checkpoint(newest.path)["meta"]["format"] == 1
    trainer = plugin_trainer(tmp_path, "old", case)
    trainer.fit(*build_data(), resume_from="latest")
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), trainer.model.parameters()))


def test_an_unknown_format_is_refused_by_name(tmp_path):
    from trainforge.snapshot import ResumeError, upgrade
    with pytest.raises(ResumeError, match="format 7 is not one this trainforge reads"):
        upgrade({"model": {}, "tensors": {}, "meta": {"format": 7}})


def test_a_second_fit_rebuilds_the_per_fit_parts(tmp_path):
    """The schedule and data are built by each fit: a second fit on one trainer replaces them in the registry."""
    train, val = build_data()
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=1, batch_size=16, schedule={"name": "plateau"}))
    trainer = Trainer(build_model(), cfg)
    trainer.fit(train, val)
    first = trainer.state.parts["schedule"]
    trainer.fit(train, val)
    assert trainer.state.parts["schedule"] is trainer.schedule is not first


def test_bookkeeping_settings_may_change_on_resume_but_the_model_may_not():
    from trainforge.snapshot import compare
    old = TrainConfig.from_dict({"max_epochs": 2}).to_dict()
    new = TrainConfig.from_dict({"max_epochs": 4, "milestones": {"val/accuracy": 0.9}, "sanity_check": False,
                                 "optimizer": {"weight_decay": 0.1}}).to_dict()
    state = {"w": torch.zeros(2, 2)}
    meta = {"model_signature": {"w": [2, 2]}, "optimizer": "AdamW", "config": old}
    blocking, allowed = compare({"config": new, "optimizer": "AdamW"}, state, meta)
    assert {line.split(":")[0] for line in allowed} == {"max_epochs", "milestones", "sanity_check"}
    assert [line.split(":")[0] for line in blocking] == ["optimizer.weight_decay"]


def test_a_manual_step_acts_on_a_non_finite_loss_at_once(tmp_path):
    """Trainer.step outside fit: the dropped update is counted, a skip warns and the next step
    trains; under halt the NaN step raises."""
    from trainforge import NonFiniteError
    x, y = tiny_data(n=8)
    model = tiny_mlp()
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, checkpoint={"enabled": False}))
    trainer = Trainer(model, cfg)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(UserWarning, match="non-finite loss at step 0.*step skipped"):
        out = trainer.step((x * float("nan"), y))
    assert out["loss"] != out["loss"]  # NaN reported
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing applied
    assert trainer.state.counters.weight_version == 0 and trainer.state.counters.skipped_steps == 1
    trainer.step((x, y))
    assert trainer.state.counters.weight_version == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    halting = Trainer(tiny_mlp(), TrainConfig.from_dict(quiet_cfg(tmp_path, grad={"non_finite": "halt"})))
    with pytest.raises(NonFiniteError, match="halting"):
        halting.step((x * float("nan"), y))


@pytest.mark.parametrize("loss, norm, scaler, drop, bad", [
    (2.5, 0.7, False, 0.0, 0.0),
    (-3.0, 0.7, False, 0.0, 0.0),              # a negative loss (a custom objective) is finite
    (float("nan"), 0.7, False, 1.0, 1.0),
    (2.5, float("inf"), False, 1.0, 1.0),
    (float("-inf"), 0.7, False, 1.0, 1.0),
    (3e38, 3e38, False, 1.0, 1.0),             # their sum overflows float32: not a step to take
    (2.5, float("inf"), True, 1.0, 0.0),       # fp16 overflow: the scaler's business, dropped, not bad
    (float("nan"), 0.7, True, 1.0, 1.0),
])
def test_step_guard_flags_non_finite_values_as_found_inf_wants_them(loss, norm, scaler, drop, bad):
    from trainforge.gradients import StepGuard

    got_drop, got_bad = StepGuard("skip", scaler).flags(torch.tensor(loss), torch.tensor(norm))
    assert got_drop.dtype == got_bad.dtype == torch.float32 and got_drop.dim() == 0
    assert (float(got_drop), float(got_bad)) == (drop, bad)


def test_step_guard_under_halt_drops_every_update_after_a_bad_step_until_reset():
    from trainforge.gradients import StepGuard

    guard = StepGuard("halt", False)
    flags = [guard.flags(torch.tensor(v), torch.tensor(0.5)) for v in (1.0, float("nan"), 1.0)]
    assert [float(d) for d, _ in flags] == [0.0, 1.0, 1.0] and [float(b) for _, b in flags] == [0.0, 1.0, 0.0]
    guard.reset()
    assert float(guard.flags(torch.tensor(1.0), torch.tensor(0.5))[0]) == 0.0
