"""Callbacks fire in the documented order, can be added/removed mid-run, and can stop the run."""


from helpers import quiet_cfg, tiny_data, tiny_mlp
from trainforge import Callback, Event, StopTraining, TrainConfig, Trainer


class Recorder(Callback):
    def __init__(self, log, tag=""):
        self.log, self.tag = log, tag

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return lambda trainer: object.__getattribute__(self, "log").append(object.__getattribute__(self, "tag") + name)
        return object.__getattribute__(self, name)


# Recorder answers every on_* lookup, but the dispatcher checks the class for overrides: define them all.
for _event in Event:
    setattr(Recorder, _event.value, lambda self, trainer, _n=_event.value: self.log.append(self.tag + _n))


def run(tmp_path, callbacks, **cfg_fields):
    x, y = tiny_data(n=16)
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, **{"max_epochs": 2, "batch_size": 8, **cfg_fields}))
    trainer = Trainer(tiny_mlp(), cfg, callbacks=callbacks)
    return trainer, trainer.fit((x, y), (x[:8], y[:8]))


def test_event_sequence_for_two_epochs_with_validation(tmp_path):
    log = []
    run(tmp_path, [Recorder(log)], checkpoint={"every_epochs": 1, "save_last": True})
    step = ["on_batch_start", "on_after_backward", "on_before_optimizer_step", "on_after_optimizer_step", "on_batch_end"]
    epoch = ["on_epoch_start", *step, *step, "on_validation_start", "on_validation_end", "on_epoch_end"]
    expected = ["on_train_start", *epoch, "on_checkpoint", *epoch, "on_checkpoint", "on_train_end"]
    assert log == expected


def test_accumulation_fires_batch_events_per_micro_batch(tmp_path):
    log = []
    run(tmp_path, [Recorder(log)], max_steps=1, grad={"accumulate": 2}, checkpoint={"enabled": False})
    assert log[:8] == ["on_train_start", "on_epoch_start", "on_batch_start", "on_batch_end", "on_batch_start",
                       "on_after_backward", "on_before_optimizer_step", "on_after_optimizer_step"]


def test_callbacks_run_in_list_order(tmp_path):
    log = []
    run(tmp_path, [Recorder(log, "a:"), Recorder(log, "b:")], max_steps=1, checkpoint={"enabled": False})
    starts = [e for e in log if e.endswith("on_train_start")]
    assert starts == ["a:on_train_start", "b:on_train_start"]


def test_add_and_remove_callbacks_during_run(tmp_path):
    log = []
    late = Recorder(log, "late:")

    class Adder(Callback):
        def on_epoch_end(self, trainer):
            if trainer.state.counters.epoch == 0:
                trainer.add_callback(late)
            else:
                trainer.remove_callback(late)

    run(tmp_path, [Adder()], checkpoint={"enabled": False})
    assert "late:on_epoch_start" in log          # added after epoch 1: saw epoch 2 start
    assert "late:on_train_end" not in log         # removed at the end of epoch 2


def test_callback_can_stop_the_run(tmp_path):
    class StopAt3(Callback):
        def on_after_optimizer_step(self, trainer):
            if trainer.state.counters.step == 3:
                raise StopTraining("enough at 3")

    trainer, result = run(tmp_path, [StopAt3()], max_epochs=10, checkpoint={"enabled": False})
    assert result.summary["steps"] == 3
    assert result.stopped_reason == "enough at 3"


def test_trainer_stop_from_callback(tmp_path):
    class Stopper(Callback):
        def on_epoch_end(self, trainer):
            trainer.stop("one epoch is enough")

    _, result = run(tmp_path, [Stopper()], max_epochs=5, checkpoint={"enabled": False})
    assert result.summary["epochs_completed"] == 1 and result.stopped_reason == "one epoch is enough"


def test_log_values_of_a_callback_reach_every_train_record(tmp_path):
    import json

    class Counter(Callback):
        calls = 0

        def log_values(self, trainer):
            Counter.calls += 1
            return {"mine/steps": trainer.state.counters.step}

    trainer, _ = run(tmp_path, [Counter()], log={"every_steps": 1, "progress": False, "sinks": ["jsonl"]})
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train = [r for r in records if r["kind"] == "train"]
    assert train and all(r["mine/steps"] == r["step"] for r in train)
    assert Counter.calls == len(train)  # asked at the log interval only
    history = trainer.state.history["mine/steps"]
    assert history["step"] == history["value"] == [r["step"] for r in train]


def test_epochs_count_from_1_in_records_and_console(tmp_path, capsys):
    import json
    trainer, result = run(tmp_path, [], log={"every_steps": 1, "progress": False, "sinks": ["jsonl", "console"]})
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    first_epoch = [r for r in records if r["step"] <= 2]
    assert {r["epoch"] for r in first_epoch} == {1}
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert "epoch 1/2 · step 2" in capsys.readouterr().err
    assert result.summary["epochs_completed"] == trainer.state.counters.epoch == 2
