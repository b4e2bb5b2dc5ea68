"""CUDA paths: mixed precision, scaler, checkpoint round trip from the device, async save from the
device, exact resume. Marked `gpu`: skipped cleanly where no CUDA device is present."""

import pytest
import torch

from helpers import quiet_cfg, tiny_data, tiny_mlp
from trainforge import Preempted, TrainConfig, Trainer

pytestmark = pytest.mark.gpu


def cfg_for(tmp_path, name="run", **fields):
    cfg = quiet_cfg(tmp_path, **{"max_epochs": 2, "batch_size": 8, "device": "cuda", **fields})
    cfg["run_dir"] = str(tmp_path / name)
    return TrainConfig.from_dict(cfg)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_trains_on_cuda(tmp_path, precision):
    x, y = tiny_data(n=64)
    trainer = Trainer(tiny_mlp(), cfg_for(tmp_path, precision=precision))
    result = trainer.fit((x, y), (x, y))
    assert next(trainer.model.parameters()).is_cuda
    assert result.summary["steps"] >= 14 and "val/accuracy" in result.history
    assert trainer.scaler.is_enabled() == (precision == "16-mixed")


@pytest.mark.parametrize("async_save", [False, True])
def test_preempt_and_resume_on_cuda_is_exact(tmp_path, async_save):
    from trainforge import Callback

    class PreemptAt(Callback):
        def on_after_optimizer_step(self, trainer):
            if trainer.state.counters.step == 5:
                trainer.request_preemption("SIGTERM")

    torch.use_deterministic_algorithms(True, warn_only=True)
    x, y = tiny_data(n=64)
    fields = {"checkpoint": {"every_steps": 3, "async_save": async_save}}
    straight = tiny_mlp()
    Trainer(straight, cfg_for(tmp_path, "a", **fields)).fit((x, y))
    with pytest.raises(Preempted):
        Trainer(tiny_mlp(), cfg_for(tmp_path, "b", **fields), callbacks=[PreemptAt()]).fit((x, y))
    resumed = tiny_mlp()
    Trainer(resumed, cfg_for(tmp_path, "b", **fields)).fit((x, y), resume_from="latest")
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
