"""Grokking benchmark: baseline vs Grokfast EMA vs Grokfast MA on x * y mod 97, and the filter's cost.

    python bench/grokking.py                          # all three configs, then the overhead
    python bench/grokking.py --only ema,ma            # skip the long baseline
    python bench/grokking.py --reuse                  # read finished runs in --runs instead of training
    python bench/grokking.py --set validation.every_epochs=10 --only baseline

Each run is the config in configs/ (``grokking_baseline.yaml``, ``grokking_grokfast.yaml``,
``grokking_grokfast_ma.yaml``), trained in this process until its ``val/accuracy >= 0.95``
milestone stops it, or its cap (the baseline's ``max_steps``: 60,000). It prints the step and the
wall time (seconds of training since the run started, from the milestone) at which each reached
95 %, the ratios baseline / filter, and the filter's per-step cost: median ratio of the time of an
optimizer step (``Trainer.step`` on a batch of 512, the grokking model) with the Grokfast callback
to one without, over interleaved rounds. An overlay report of the runs (log-scale step axis,
milestones marked) is written to ``<runs>/grokking_report.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from trainforge import Trainer  # noqa: E402
from trainforge.optim import EMAFilter, Grokfast, MAFilter  # noqa: E402
from trainforge.recipes import grokking  # noqa: E402
from trainforge.run import load_config, run_config  # noqa: E402

RUNS = {"baseline": "grokking_baseline.yaml", "ema": "grokking_grokfast.yaml", "ma": "grokking_grokfast_ma.yaml"}
PAPER = {"baseline": 39_890, "ema": 910, "ma": 790}


def train(name: str, runs: Path, overrides: list[str], reuse: bool) -> dict:
    run_dir = runs / name
    result_path = run_dir / "result.json"
    cpu = None
    if not (reuse and result_path.is_file()):
        cfg = load_config(ROOT / "configs" / RUNS[name], ["log.progress=false", "log.sinks=[jsonl]", *overrides],
                          run_dir=str(run_dir))
        started, cpu_started = time.perf_counter(), time.process_time()
        run_config(cfg, report=False, quiet=True)
        # CPU seconds of this process: with one thread, about the wall time the run takes on an idle core.
        cpu = time.process_time() - cpu_started
        print(f"  {name}: trained in {time.perf_counter() - started:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    result = json.loads(result_path.read_text())
    hit = (result.get("milestones") or {}).get("val/accuracy")
    return {"name": name, "run_dir": str(run_dir), "steps": hit["step"] if hit else None,
            "wall_time": hit["wall_time"] if hit else None, "total_steps": result["summary"]["steps"],
            "stopped_reason": result["stopped_reason"], "cpu": cpu}


def step_times(kinds: list[str], rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per optimizer step, per kind (none | ema | ma), interleaved round by round."""
    cfg = load_config(ROOT / "configs" / "grokking_grokfast.yaml", ["log.progress=false", "grokfast=null"],
                      run_dir="/tmp/trainforge-bench-grokking")
    parts = grokking.build(cfg)
    x, y = parts.train_data
    batches = [(x[i:i + 512], y[i:i + 512]) for i in range(0, 4096, 512)]
    trainers = {}
    for kind in kinds:
        callbacks = [] if kind == "none" else [Grokfast("ema", alpha=0.98, lamb=2.0) if kind == "ema"
                                               else Grokfast("ma", window=100, lamb=5.0)]
        model = grokking.build(cfg).model
        trainers[kind] = Trainer(model, cfg, callbacks=callbacks)
        for b in batches[:3]:  # warm up (the MA queue then holds 3 of 100 — its cost does not depend on that)
            trainers[kind].step(b)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind, trainer in trainers.items():
            started = time.perf_counter()
            for i in range(steps):
                trainer.step(batches[i % len(batches)])
            times[kind].append((time.perf_counter() - started) / steps)
    return times


def filter_times(rounds: int, calls: int) -> dict[str, list[float]]:
    """Seconds per call of each filter alone on the grokking model's gradients (a real backward's)."""
    cfg = load_config(ROOT / "configs" / "grokking_grokfast.yaml", ["log.progress=false"], run_dir="/tmp/x")
    parts = grokking.build(cfg)
    x, y = parts.train_data
    model = parts.model
    torch.nn.functional.cross_entropy(model(x[:512]), y[:512]).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad.clone() for p in params]
    out = {}
    for kind, f in (("ema", EMAFilter(0.98)), ("ma", MAFilter(100))):
        times = []
        for _ in range(rounds):
            for p, g in zip(params, saved):
                p.grad = g.clone()
            started = time.perf_counter()
            for _ in range(calls):
                f(params, 2.0)
            times.append((time.perf_counter() - started) / calls)
        out[kind] = times
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/bench_grokking", help="where the run directories go")
    ap.add_argument("--only", default="baseline,ema,ma", help="comma-separated subset of baseline, ema, ma, "
                                                                "overhead (default: all runs, then overhead)")
    ap.add_argument("--reuse", action="store_true", help="read a finished run in --runs instead of training it")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override for the runs")
    ap.add_argument("--rounds", type=int, default=7, help="overhead: interleaved rounds")
    ap.add_argument("--steps", type=int, default=30, help="overhead: optimizer steps per round and kind")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    wanted_runs = [n for n in RUNS if n in chosen]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; runs in {args.runs}", flush=True)

    results = {name: train(name, Path(args.runs), args.overrides, args.reuse) for name in wanted_runs}
    if results:
        print("\n| run | steps to 95 % val acc | wall s to 95 % | CPU s of the run | paper (steps) | stopped |")
        print("|---|---|---|---|---|---|")
        for r in results.values():
            steps = f"{r['steps']:,}" if r["steps"] is not None else f"not reached in {r['total_steps']:,}"
            wall = f"{r['wall_time']:.1f}" if r["wall_time"] is not None else "-"
            cpu = f"{r['cpu']:.1f}" if r["cpu"] is not None else "-"
            print(f"| {r['name']} | {steps} | {wall} | {cpu} | {PAPER[r['name']]:,} | {r['stopped_reason']} |")
        base = results.get("baseline", {}).get("steps")
        for name in ("ema", "ma"):
            steps = results.get(name, {}).get("steps")
            if base and steps:
                print(f"baseline / {name}: {base / steps:.1f}x steps (paper: {PAPER['baseline'] / PAPER[name]:.1f}x)")
        from trainforge.report import write_report
        out = write_report([r["run_dir"] for r in results.values()], Path(args.runs) / "grokking_report.png",
                           log_steps=len(results) > 1)
        print(f"overlay: {out}")

    if "overhead" in chosen or chosen == list(RUNS):
        times = step_times(["none", "ema", "ma"], args.rounds, args.steps)
        base = times["none"]
        print(f"\nper-step time, median of {args.rounds} interleaved rounds of {args.steps} steps:")
        print(f"  no filter: {statistics.median(base) * 1000:.1f} ms")
        for kind in ("ema", "ma"):
            ratios = [t / b for t, b in zip(times[kind], base)]
            print(f"  {kind}: {statistics.median(times[kind]) * 1000:.1f} ms, ratio {statistics.median(ratios):.3f} "
                  f"(rounds {min(ratios):.3f}-{max(ratios):.3f})")
        # On a shared machine the rounds above swing by tens of percent; the fastest round of each
        # (the least disturbed) and the filter timed alone give steadier estimates.
        alone = filter_times(args.rounds, args.steps)
        fastest = min(base)
        print(f"fastest round without a filter: {fastest * 1000:.1f} ms/step")
        for kind in ("ema", "ma"):
            cost = min(alone[kind])
            print(f"  {kind}: fastest round {min(times[kind]) * 1000:.1f} ms (ratio {min(times[kind]) / fastest:.3f}); "
                  f"the filter alone {cost * 1000:.2f} ms/call -> (step + filter) / step = "
                  f"{(fastest + cost) / fastest:.3f}")


if __name__ == "__main__":
    main()
