"""Data-path throughput against hand-written loops (a script, not a test).

1. Tokens/s of TokenWindowDataset over a memory-mapped .bin through make_loader (num_workers 0
   and 2), against the same windows in the same order read by plain numpy slicing in a loop.
2. Records/s of stream_dataset over a JSONL file, against a plain ``json.loads`` loop.

The machine may be shared and noisy: the variants are interleaved, repeated, and the median taken.

    .venv/bin/python bench/data.py [--tokens 20000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainforge.data import TokenWindowDataset, make_loader, prepare_epoch, stream_dataset


def write_tokens(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for start in range(0, n, 1 << 22):  # in chunks: the point is a file we never hold whole
        with open(path, "ab") as f:
            rng.integers(0, 50_000, min(1 << 22, n - start), dtype=np.uint16).tofile(f)


def write_jsonl(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "label": int(rng.integers(10)), "score": float(rng.random()),
                                "text": f"record number {i} of the benchmark"}) + "\n")


# --- token windows -----------------------------------------------------------------------------

def loader_run(tokens: np.memmap, args, workers: int, epoch: int) -> tuple[float, float]:
    """(seconds for args.batches batches after the first, seconds to the first batch)."""
    ds = TokenWindowDataset(tokens, args.context)
    loader = make_loader(ds, batch_size=args.batch, num_workers=workers, seed=0, pin_memory=False)
    prepare_epoch(loader, 0, epoch)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    t1 = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    t2 = time.perf_counter()
    del it
    return t2 - t1, t1 - t0


def numpy_run(tokens: np.memmap, args, epoch: int) -> float:
    """The same windows, in the same order, by hand: slice, stack, widen to int64."""
    ds = TokenWindowDataset(tokens, args.context)
    loader = make_loader(ds, batch_size=args.batch, num_workers=0, seed=0)
    prepare_epoch(loader, 0, epoch)
    order = loader.sampler.order(epoch).numpy()  # computing the permutation is not timed
    span, bs = args.context + 1, args.batch
    t0 = time.perf_counter()
    for b in range(1, args.batches + 1):  # batch 0 is the loaders' untimed first batch
        starts = order[b * bs:(b + 1) * bs] * args.context
        torch.from_numpy(np.stack([tokens[s:s + span] for s in starts]).astype(np.int64))
    return time.perf_counter() - t0


def bench_tokens(tmp: Path, args) -> None:
    path = tmp / "tokens.bin"
    write_tokens(path, args.tokens)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    args.batches = min(args.batches, len(TokenWindowDataset(tokens, args.context)) // args.batch - 1)
    per_batch = args.batch * (args.context + 1)
    times: dict[str, list[float]] = {"numpy loop": [], "make_loader w=0": [], "make_loader w=2": []}
    startup = []
    for r in range(args.repeats):
        times["numpy loop"].append(numpy_run(tokens, args, r))
        times["make_loader w=0"].append(loader_run(tokens, args, 0, r)[0])
        steady, first = loader_run(tokens, args, 2, r)
        times["make_loader w=2"].append(steady)
        startup.append(first)
    print(f"\nTokenWindowDataset, memmap .bin of {args.tokens:,} uint16 tokens, context {args.context}, "
          f"batch {args.batch}, {args.batches} batches, median of {args.repeats}")
    base = statistics.median(times["numpy loop"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:18s} {args.batches * per_batch / med / 1e6:8.1f} M tokens/s   ratio {base / med:5.2f}")
    print(f"  (w=2: {statistics.median(startup) * 1e3:.0f} ms to the first batch, not counted above)")


# --- JSONL streaming ---------------------------------------------------------------------------

def plain_jsonl(path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        for line in f:
            json.loads(line)
    return time.perf_counter() - t0


def stream_jsonl(path: Path) -> float:
    t0 = time.perf_counter()
    for _ in stream_dataset(path):
        pass
    return time.perf_counter() - t0


def loader_jsonl(path: Path, batch: int) -> float:
    t0 = time.perf_counter()
    for _ in make_loader(stream_dataset(path, fields=["id", "label", "score"]), batch_size=batch, num_workers=0):
        pass
    return time.perf_counter() - t0


def bench_jsonl(tmp: Path, args) -> None:
    path = tmp / "records.jsonl"
    write_jsonl(path, args.records)
    times: dict[str, list[float]] = {"json.loads loop": [], "stream_dataset": [], "+ make_loader/collate": []}
    for _ in range(args.repeats):
        times["json.loads loop"].append(plain_jsonl(path))
        times["stream_dataset"].append(stream_jsonl(path))
        times["+ make_loader/collate"].append(loader_jsonl(path, args.batch))
    print(f"\nJSONL, {args.records:,} records ({path.stat().st_size / 1e6:.1f} MB), median of {args.repeats}")
    base = statistics.median(times["json.loads loop"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:22s} {args.records / med / 1e3:8.1f} k records/s   ratio {base / med:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20_000_000)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=400, help="timed batches per run")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        bench_tokens(Path(tmp), args)
        bench_jsonl(Path(tmp), args)


if __name__ == "__main__":
    main()
