"""Signals (SIGUSR1 pause, SIGUSR2 resume), fp16 with a scaler, torch.compile, the progress bar."""

import os
import signal
import threading
import time

import pytest
import torch

from helpers import quiet_cfg, tiny_data, tiny_mlp
from trainforge import Callback, Phase, TrainConfig, Trainer
from trainforge.callbacks.progress import ProgressBar


def cfg_for(tmp_path, **fields):
    return TrainConfig.from_dict(quiet_cfg(tmp_path, **{"max_epochs": 1, "batch_size": 8, **fields}))


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_sigusr1_pauses_and_sigusr2_resumes(tmp_path):
    resumed = threading.Event()

    class Driver(Callback):
        def on_after_optimizer_step(self, trainer):
            if trainer.state.counters.step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)  # handler runs in this (main) thread: only a flag
                threading.Timer(0.3, lambda: (os.kill(os.getpid(), signal.SIGUSR2), resumed.set())).start()

    x, y = tiny_data(n=48)
    trainer = Trainer(tiny_mlp(), cfg_for(tmp_path), callbacks=[Driver()])
    started = time.perf_counter()
    trainer.fit((x, y))
    assert resumed.is_set() and time.perf_counter() - started >= 0.3  # it really waited while paused
    assert trainer.phase == Phase.COMPLETED and trainer.state.counters.step == 6


def test_signal_handlers_are_restored_after_fit(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    x, y = tiny_data(n=16)
    Trainer(tiny_mlp(), cfg_for(tmp_path)).fit((x, y))
    assert signal.getsignal(signal.SIGTERM) is before


def test_fp16_mixed_uses_a_grad_scaler(tmp_path):
    x, y = tiny_data(n=32)
    trainer = Trainer(tiny_mlp(), cfg_for(tmp_path, max_epochs=2, precision="16-mixed"))
    assert trainer.scaler.is_enabled()
    result = trainer.fit((x, y))
    assert result.summary["steps"] >= 6  # the scaler may skip an overflowing first step or two
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.scaler.get_scale() > 0


@pytest.mark.slow
def test_compile_opt_in_trains_and_matches_shapes(tmp_path):
    x, y = tiny_data(n=32)
    model = tiny_mlp()
    try:
        result = Trainer(model, cfg_for(tmp_path, compile=True)).fit((x, y), (x, y))
    except Exception as e:  # no working C++ toolchain for inductor on this machine
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {e}"[:200])
    assert result.summary["steps"] == 4 and "val/loss" in result.history
    # the saved state is the plain module's (no _orig_mod. prefixes)
    from trainforge.checkpoint import load_checkpoint
    keys = list(load_checkpoint(result.final_checkpoint)["model"])
    assert keys == list(model.state_dict()) and not any(k.startswith("_orig_mod") for k in keys)


def test_progress_bar_counts_every_batch_and_shows_loss(tmp_path):
    seen = {}

    class Probe(ProgressBar):
        def on_epoch_end(self, trainer):
            seen["n"], seen["total"] = self.bar.n, self.bar.total
            seen["postfix"] = self.bar.postfix
            super().on_epoch_end(trainer)

    x, y = tiny_data(n=64)
    os.environ["TQDM_DISABLE"] = "0"
    try:
        Trainer(tiny_mlp(), cfg_for(tmp_path, log={"every_steps": 2, "progress": True}), callbacks=[Probe()]).fit((x, y))
    finally:
        os.environ["TQDM_DISABLE"] = "1"
    assert seen["n"] == seen["total"] == 8
    assert "loss=" in seen["postfix"] and "lr=" in seen["postfix"]
