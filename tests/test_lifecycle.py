"""Phases change along legal transitions only; pause/resume/stop work from another thread."""

import threading
import time

import pytest

from helpers import quiet_cfg, tiny_data, tiny_mlp
from trainforge import Callback, IllegalTransition, Phase, TrainConfig, Trainer
from trainforge.state import TRANSITIONS, Lifecycle


def test_every_illegal_transition_raises():
    for start in Phase:
        for target in Phase:
            machine = Lifecycle()
            machine._phase = start
            if target in TRANSITIONS[start]:
                machine.to(target)
                assert machine.phase == target
            else:
                with pytest.raises(IllegalTransition, match=f"{start} -> {target}"):
                    machine.to(target)
                assert machine.phase == start


def test_phase_names_print():
    assert str(Phase.CHECKPOINTING) == "CHECKPOINTING"
    assert [p.value for p in Phase] == ["IDLE", "INITIALIZING", "RUNNING", "PAUSED", "CHECKPOINTING", "RESTORING",
                                        "COMPLETED", "ERROR"]


def test_fit_walks_idle_running_completed(tmp_path):
    seen = []

    class Watch(Callback):
        def on_train_start(self, trainer):
            seen.append(trainer.phase)

    x, y = tiny_data(n=16)
    trainer = Trainer(tiny_mlp(), TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=1, batch_size=8)), callbacks=[Watch()])
    assert trainer.phase == Phase.IDLE
    trainer.fit((x, y))
    assert seen == [Phase.RUNNING] and trainer.phase == Phase.COMPLETED
    trainer.fit((x, y))  # a second fit on the same trainer is legal from COMPLETED
    assert trainer.phase == Phase.COMPLETED


def test_pause_and_resume_from_another_thread(tmp_path):
    x, y = tiny_data(n=64)
    paused_at = {}

    class Slow(Callback):
        def on_batch_end(self, trainer):
            time.sleep(0.002)

    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=50, batch_size=8, checkpoint={"enabled": False}))
    trainer = Trainer(tiny_mlp(), cfg, callbacks=[Slow()])
    worker = threading.Thread(target=trainer.fit, args=((x, y),))
    worker.start()
    while trainer.phase != Phase.RUNNING:
        time.sleep(0.001)
    trainer.pause()
    deadline = time.time() + 10
    while trainer.phase != Phase.PAUSED and time.time() < deadline:
        time.sleep(0.001)
    assert trainer.phase == Phase.PAUSED
    paused_at["step"] = trainer.state.counters.step
    time.sleep(0.2)
    assert trainer.state.counters.step == paused_at["step"]  # no progress while paused
    trainer.unpause()
    time.sleep(0.05)
    trainer.stop("test over")
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert trainer.state.counters.step > paused_at["step"]
    assert trainer.phase == Phase.COMPLETED and trainer.state.stopped_reason == "test over"


def test_error_phase_on_exception_and_on_error_event(tmp_path):
    events = []

    class Boom(Callback):
        def on_batch_end(self, trainer):
            raise RuntimeError("boom")

        def on_error(self, trainer):
            events.append("error")

        def on_train_end(self, trainer):
            events.append("end")

    x, y = tiny_data(n=16)
    trainer = Trainer(tiny_mlp(), TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=1, batch_size=8)), callbacks=[Boom()])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit((x, y))
    assert trainer.phase == Phase.ERROR and events == ["error", "end"]


def test_lr_read_and_set_at_run_time(tmp_path):
    seen = []

    class SetLr(Callback):
        def on_after_optimizer_step(self, trainer):
            if trainer.state.counters.step == 2:
                trainer.set_lr(0.5)
            seen.append(trainer.lr)

    x, y = tiny_data(n=32)
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=1, batch_size=8, optimizer={"lr": 0.1},
                                          schedule={"name": "constant"}, checkpoint={"enabled": False}))
    Trainer(tiny_mlp(), cfg, callbacks=[SetLr()]).fit((x, y))
    assert seen == [0.1, 0.5, 0.5, 0.5]


def test_set_lr_scales_the_schedule_from_there(tmp_path):
    x, y = tiny_data(n=80)
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=1, batch_size=8, optimizer={"lr": 1.0},
                                          schedule={"name": "linear", "warmup": 0.0, "min_lr_ratio": 0.0},
                                          checkpoint={"enabled": False}))
    trainer = Trainer(tiny_mlp(), cfg)
    lrs = []

    class Watch(Callback):
        def on_before_optimizer_step(self, t):
            if t.state.counters.step == 4:
                t.set_lr(t.lr / 2)
            lrs.append(t.lr)

    trainer.add_callback(Watch())
    trainer.fit((x, y))
    # linear decay 1.0, 0.9, ...; halved from step 4 on, keeping the decay's shape
    assert lrs[3] == pytest.approx(0.7) and lrs[4] == pytest.approx(0.3) and lrs[5] == pytest.approx(0.25)


def test_resume_is_a_deprecated_name_of_unpause(tmp_path):
    trainer = Trainer(tiny_mlp(), TrainConfig.from_dict(quiet_cfg(tmp_path)))
    trainer.pause()
    with pytest.warns(DeprecationWarning, match="use unpause"):
        trainer.resume()
    assert not trainer.controls.pause_requested
