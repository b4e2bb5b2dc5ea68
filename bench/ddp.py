"""Distributed throughput and memory on CPU: 1 process vs 2 (DDP and FSDP) under torchrun.

Throughput: a compute-bound MLP (width 1024, 4 hidden layers), the same global batch (``--batch``,
default 128) on 1 process, on 1 process under torchrun (DDP at world size 1: the cost of the
distributed path itself) and on 2 ranks of half of it; every process runs 1 thread, so 2 processes
use 2 cores. Each
run trains ``--steps`` optimizer steps through trainforge; samples/s is the median of the
log-interval rates after the first interval (warm-up). Scaling efficiency = (samples/s with 2) /
(2 x samples/s with 1).

Memory: a larger MLP (8 layers of 2048 x 2048, 33.6 M parameters) trained 3 steps with AdamW;
per rank, the bytes of the parameters, gradients and optimizer state this rank holds (FSDP: its
shards; DDP: everything) counted from the tensors themselves, and the peak RSS of the process.

    .venv/bin/python bench/ddp.py [--steps 60] [--batch 128] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from trainforge import Callback, Trainer

HERE = Path(__file__).resolve()


def mlp(width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


class Measure(Callback):
    """The bytes this rank holds just before its 2nd optimizer step (gradients present, the optimizer
    state made by the 1st step), counted from the tensors (a DTensor: its local shard)."""

    def __init__(self):
        self.bytes = None

    def on_before_optimizer_step(self, trainer):
        if trainer.state.counters.step == 1:
            params = list(trainer.model.parameters())
            state = [v for s in trainer.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
            self.bytes = {"params": local_bytes(params), "optimizer": local_bytes(state),
                          "grads": local_bytes([p.grad for p in params if p.grad is not None])}


def worker(args) -> None:
    """One process of a run (under torchrun, or alone for the 1-process case)."""
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    width, depth = (2048, 8) if args.case == "memory" else (1024, 4)
    global_batch = args.batch if args.case == "speed" else 32
    n = global_batch * (args.steps + 2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)
    measure = Measure()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = {"run_dir": run_dir, "max_steps": args.steps, "batch_size": global_batch // world, "seed": 0,
               "task": "classification", "optimizer": {"lr": 1e-3}, "schedule": {"name": "constant"},
               "checkpoint": {"enabled": False}, "validation": {"every_epochs": None}, "sanity_check": False,
               "log": {"every_steps": 10, "sinks": ["jsonl"], "progress": False, "memory": False},
               "distributed": {"strategy": args.strategy}}
        trainer = Trainer(mlp(width, depth), cfg, task="classification", callbacks=[measure])
        trainer.fit((x, y))
        log = Path(run_dir) / "metrics.jsonl"  # rank 0 writes it (the rates are global)
        rates = [r["throughput/samples_per_s"] for r in map(json.loads, open(log))
                 if r.get("kind") == "train" and "throughput/samples_per_s" in r] if log.exists() else [0.0]
    out = {"rank": int(os.environ.get("RANK", "0")), "world": world, "strategy": args.strategy,
           "samples_per_s": statistics.median(rates[1:] or rates), "bytes": measure.bytes,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    with open(f"{args.out}.rank{out['rank']}", "w") as f:
        json.dump(out, f)


def run(case: str, nproc: int, strategy: str, steps: int, torchrun: bool = False, batch: int = 128) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result"
        tail = [str(HERE), "--worker", "--case", case, "--strategy", strategy, "--steps", str(steps),
                "--batch", str(batch), "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if nproc == 1 and not torchrun:
            cmd = [sys.executable, *tail]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *tail]
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
        return [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(nproc)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", default="speed", choices=["speed", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="ddp", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=128, help="global batch of the throughput runs (default 128)")
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    print(f"cpu cores: {os.cpu_count()} · torch {torch.__version__} · 1 thread per process")
    one = run("speed", 1, "ddp", args.steps, batch=args.batch)[0]["samples_per_s"]
    print(f"compute-bound MLP (1024 x 4), global batch {args.batch}, {args.steps} steps:")
    print(f"  1 process            {one:9.0f} samples/s")
    ddp1 = run("speed", 1, "ddp", args.steps, torchrun=True, batch=args.batch)[0]["samples_per_s"]
    print(f"  1 process, DDP       {ddp1:9.0f} samples/s  · under torchrun, world size 1: {ddp1 / one:.0%} of plain")
    for strategy in ("ddp", "fsdp"):
        two = run("speed", 2, strategy, args.steps, batch=args.batch)[0]["samples_per_s"]
        print(f"  2 processes {strategy:<4}     {two:9.0f} samples/s  · scaling efficiency {two / (2 * one):.0%}")
    if args.skip_memory:
        return
    print("memory per rank, MLP 2048 x 8 (33.6 M parameters), AdamW, at the 2nd step:")
    base = run("memory", 1, "ddp", 3)[0]
    rows = [("1 process", base)] + [(f"2 processes {s}", run("memory", 2, s, 3)[0]) for s in ("ddp", "fsdp")]
    for name, r in rows:
        b = r["bytes"]
        held = (b["params"] + b["grads"] + b["optimizer"]) / 2**20
        print(f"  {name:<17} params {b['params'] / 2**20:6.0f} MiB · grads {b['grads'] / 2**20:6.0f} MiB · optimizer "
              f"{b['optimizer'] / 2**20:6.0f} MiB · held {held:6.0f} MiB · peak RSS {r['peak_rss_mb']:6.0f} MiB")


if __name__ == "__main__":
    main()
