"""The host allocator tuning: freed activation memory is reused, not faulted in again."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parent.parent / "src")

# 64 MiB live at once, then freed (as a validation forward's activations are): more than glibc's
# dynamic trim threshold, so by default the heap top goes back to the kernel after every round.
ROUNDS = f"""
import resource, sys, torch
sys.path.insert(0, {SRC!r})
from trainforge.host_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "fit" else False
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def work():
    kept = [torch.ones(8 << 18) for _ in range(8)]
    del kept
for _ in range(3): work()
f = faults()
for _ in range(10): work()
print(applied, (faults() - f) / 10)
"""


def run_rounds(mode: str, **env: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", float(out[1])


glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc's mallopt only")


@glibc
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    applied, faults = run_rounds("fit")
    assert applied and faults < 100  # 64 MiB would be ~16,000 4-KiB faults per round
    applied, faults = run_rounds("plain")
    assert not applied and faults > 4000  # the default glibc behaviour this guards against


@glibc
def test_the_environment_turns_it_off():
    applied, faults = run_rounds("fit", TRAINFORGE_HOST_MEMORY="system")
    assert not applied and faults > 4000


def test_a_fit_applies_it(tmp_path, monkeypatch):
    import trainforge.trainer as trainer_module
    from helpers import quiet_cfg, tiny_data, tiny_mlp
    from trainforge import Trainer, TrainConfig

    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_steps=2, batch_size=8, checkpoint={"enabled": False}))
    Trainer(tiny_mlp(), cfg).fit(tiny_data())
    assert calls == [1]
