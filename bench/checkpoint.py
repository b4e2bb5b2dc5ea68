"""Checkpoint benchmark: sync save, async-save stall, load, and disk size against a raw torch.save.

    .venv/bin/python bench/checkpoint.py [--mb 100] [--repeats 3] [--dir /some/disk]

The model is a stack of square fp32 Linear layers holding about --mb megabytes of parameters,
plus an AdamW state after one step (so the checkpoint is about 3x --mb). Everything is written
into a temporary directory that is removed at the end. Targets: an async save stalls training for
< 10% of a sync save; the checkpoint is within 5% of a raw torch.save of the same state dicts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from trainforge.checkpoint import CheckpointManager


def build(mb: float, width: int = 2048) -> tuple[nn.Module, torch.optim.Optimizer]:
    per_layer = (width * width + width) * 4 / 1e6
    layers = max(1, round(mb / per_layer))
    model = nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, width)).square().mean().backward()
    opt.step()  # materialises exp_avg / exp_avg_sq
    return model, opt


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100.0, help="parameter megabytes (fp32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to put the temporary directory (default: system temp)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model, opt = build(args.mb)
    n_params = sum(p.numel() for p in model.parameters())
    payload = {"model": model.state_dict(), "tensors": {"optimizer": opt.state_dict()}, "meta": {"step": 1}}
    root = Path(tempfile.mkdtemp(prefix="trainforge-bench-ckpt-", dir=args.dir))
    print(f"model: {n_params / 1e6:.1f} M params = {n_params * 4 / 1e6:.0f} MB fp32, + AdamW state; "
          f"torch {torch.__version__}, {os.cpu_count()} cpus, dir {root}")
    try:
        counter = iter(range(10**6))

        sync = CheckpointManager(root / "sync", keep_last=1)
        t_sync = median_time(lambda: sync.save(f"s{next(counter)}", payload, step=1, epoch=0), args.repeats)

        asyn = CheckpointManager(root / "async", keep_last=1, async_save=True)
        stalls, totals = [], []
        for _ in range(args.repeats + 1):  # the first one also allocates the reusable host buffers
            t0 = time.perf_counter()
            asyn.save(f"a{next(counter)}", payload, step=1, epoch=0)
            stalls.append(time.perf_counter() - t0)
            asyn.wait()
            totals.append(time.perf_counter() - t0)
        t_first = stalls.pop(0)
        t_stall, t_async_total = statistics.median(stalls), statistics.median(totals[1:])

        latest = sync.latest_valid()
        t_load = median_time(lambda: sync.load(latest.path), args.repeats)

        raw = root / "raw.pt"
        t_raw = median_time(lambda: torch.save({"model": payload["model"], "optimizer": opt.state_dict()}, raw),
                            args.repeats)
        ckpt_bytes, raw_bytes = dir_size(latest.path), raw.stat().st_size

        print(f"sync save (median of {args.repeats}):   {t_sync:8.3f} s   "
              f"(raw torch.save, no fsync/hash: {t_raw:.3f} s)")
        print(f"async save stall (save() returns): {t_stall:8.3f} s   = {100 * t_stall / t_sync:.1f}% of sync "
              f"(target < 10%); first one {t_first:.3f} s; full async write {t_async_total:.3f} s")
        print(f"load (verify sha256 + read):       {t_load:8.3f} s")
        print(f"disk: checkpoint {ckpt_bytes / 1e6:.1f} MB vs raw torch.save {raw_bytes / 1e6:.1f} MB "
              f"= {100 * (ckpt_bytes / raw_bytes - 1):+.2f}% (target within 5%)")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
