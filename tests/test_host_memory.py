"""The host allocator tuning: freed activation memory is reused, not faulted in again."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parent.parent / "src")

# What glibc does with one 24 MiB block: served by mmap (and unmapped at free), or from the heap and
# kept there when freed. Without torch, the process's dynamic mmap threshold is still glibc's
# 128 KiB default, so the plain answer is deterministic too.
ONE_BLOCK = f"""
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("host_memory", {SRC!r} + "/trainforge/host_memory.py")
host_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_memory)  # the module alone: the package would import torch
applied = host_memory.keep_freed_memory() if sys.argv[1] == "fit" else False
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 24 << 20
before = libc.mallinfo2()
block = libc.malloc(size)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(applied, during.hblkhd - before.hblkhd >= size, after.fordblks - during.fordblks >= size)
"""

# A validation's pattern: 64 MiB of activations live at once, then freed, round after round.
ROUNDS = f"""
import resource, sys, torch
sys.path.insert(0, {SRC!r})
from trainforge.host_memory import keep_freed_memory
assert keep_freed_memory()
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def work():
    kept = [torch.ones(8 << 18) for _ in range(8)]
    del kept
for _ in range(3): work()
f = faults()
for _ in range(10): work()
print((faults() - f) / 10)
"""


def run(script: str, *args: str, **env: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout.split()


glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(os, "confstr")
                           or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""), reason="glibc's mallopt only")


@glibc
def test_a_freed_block_stays_in_the_heap_instead_of_going_back_to_the_kernel():
    applied, mapped, kept = run(ONE_BLOCK, "fit")
    assert (applied, mapped, kept) == ("True", "False", "True")
    applied, mapped, kept = run(ONE_BLOCK, "plain")  # glibc's own behaviour, which this changes
    assert (applied, mapped, kept) == ("False", "True", "False")


@glibc
def test_the_environment_turns_it_off():
    assert run(ONE_BLOCK, "fit", TRAINFORGE_HOST_MEMORY="system") == ["False", "True", "False"]


@glibc
def test_a_validation_pattern_reuses_its_memory_without_page_faults():
    faults = float(run(ROUNDS)[0])
    assert faults < 100  # 64 MiB faulted in again would be ~16,000 4-KiB faults per round


def test_a_fit_applies_it(tmp_path, monkeypatch):
    import trainforge.trainer as trainer_module
    from helpers import quiet_cfg, tiny_data, tiny_mlp
    from trainforge import Trainer, TrainConfig

    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_steps=2, batch_size=8, checkpoint={"enabled": False}))
    Trainer(tiny_mlp(), cfg).fit(tiny_data())
    assert calls == [1]
