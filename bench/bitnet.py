"""BitNet vs dense on our recipes: quality, step time, exported size.

digits (configs/digits.yaml without its gate, then configs/digits_bitnet*.yaml; same seed, same
budget): dense, BitNet 1.58, BitNet 1, BitNet 1.58 distilled from the dense run (the teacher).
char_lm (configs/char_lm_cpu.yaml vs configs/char_lm_bitnet.yaml, equal steps): dense vs BitNet 1.58.
Step time: median of ``--time-steps`` full training steps (forward, loss, backward, clip, AdamW) of
the recipe's model on one fixed batch, dense and converted interleaved, on ``--time-threads`` threads.
Size: the dense model's state in fp32 vs the packed export (``export_bitnet``), and the converted
layers alone (fp32 weights vs packed codes + scales).

On a machine shared with other work, run it with ``OMP_NUM_THREADS=1``: several processes that
each spin two OpenMP threads on two cores made a char_lm step ~100x slower here (3.4 s, not 35 ms).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bitnet.py [--digits-epochs 30] [--char-steps 2000] [--no-char]
        [--no-digits] [--time-steps 30] [--time-threads 1] [--seed S] [--out runs/bench_bitnet] [--reuse]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trainforge.quant import convert_to_bitnet, export_bitnet
from trainforge.run import build_parts, load_config, run_config
from trainforge.transforms import convert_from_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


TIME_THREADS = 1  # --time-threads: one thread is the steadiest measure on a shared machine
SEED: list[str] = []  # --seed: an override applied to every run
REUSE = False  # --reuse: a finished run already in --out is read back instead of trained again


def train(config: str, run_dir: Path, overrides: list[str]) -> tuple[dict, object]:
    cfg = load_config(CONFIGS / config, ["log.progress=false", "log.sinks=[jsonl]", *SEED, *overrides], str(run_dir))
    if REUSE and (run_dir / "result.json").is_file():
        result = json.loads((run_dir / "result.json").read_text())
        saved, wanted = dict(result.get("config") or {}), cfg.to_dict()
        saved.pop("run_dir", None), wanted.pop("run_dir", None)
        if result.get("phase") == "COMPLETED" and saved == wanted:
            print(f"reusing {run_dir}", file=sys.stderr)
            return {k: v["value"][-1] for k, v in result["curves"].items() if v["value"]}, cfg
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    result = run_config(cfg, report=False, quiet=True)
    values = {k: v[-1] for k, v in result.history.items() if v}
    values["wall_s"] = time.perf_counter() - started
    return values, cfg


def exported_size(cfg, run_dir: Path) -> str:
    if cfg.bitnet is None:
        return "-"
    from trainforge.checkpoint import CheckpointManager, load_checkpoint
    info = CheckpointManager(run_dir / "checkpoints", keep_last=None).latest_valid()
    model = build_parts(cfg).model
    convert_from_config(model, cfg.bitnet)
    model.load_state_dict({k: v for k, v in load_checkpoint(info.path)["model"].items()
                           if not k.startswith("trainforge_loss.")})
    s = export_bitnet(model, run_dir / "bitnet.safetensors")
    return (f"{s.file_bytes / 1e3:.1f} kB of {s.dense_bytes / 1e3:.1f} kB ({s.file_ratio:.2f}x); "
            f"layers {s.layer_fp32_bytes / 1e3:.1f} -> {s.layer_packed_bytes / 1e3:.1f} kB ({s.layer_ratio:.1f}x)")


def step_times(cfg, batch_fn, steps: int) -> tuple[float, float]:
    """Median seconds per training step, dense and BitNet (cfg.bitnet), interleaved, on TIME_THREADS threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(TIME_THREADS)
    try:
        return _step_times(cfg, batch_fn, steps)
    finally:
        torch.set_num_threads(threads)


def _step_times(cfg, batch_fn, steps: int) -> tuple[float, float]:
    dense = build_parts(cfg).model
    bit = copy.deepcopy(dense)
    convert_to_bitnet(bit, cfg.bitnet.weight_bits, cfg.bitnet.skip, act_bits=cfg.bitnet.act_bits, norm=cfg.bitnet.norm)
    x, y = batch_fn()
    models = {"dense": dense, "bitnet": bit}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}

    def one(name: str) -> float:
        m, opt = models[name], opts[name]
        t0 = time.perf_counter()
        logits = m(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for name in models:  # warm up
        for _ in range(3):
            one(name)
    for _ in range(steps):
        for name in models:
            times[name].append(one(name))
    return statistics.median(times["dense"]), statistics.median(times["bitnet"])


def row(name: str, metric: str, values: dict, step_s: float | None, size: str) -> str:
    step = f"{step_s * 1e3:.1f} ms" if step_s is not None else "-"
    return f"| {name} | {metric} {values[metric]:.4f} | {values.get('val/loss', float('nan')):.4f} | {step} | {size} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits-epochs", type=int, default=30)
    ap.add_argument("--char-steps", type=int, default=2000)
    ap.add_argument("--time-steps", type=int, default=30)
    ap.add_argument("--time-threads", type=int, default=1, help="torch threads while timing steps (default 1)")
    ap.add_argument("--no-digits", action="store_true")
    ap.add_argument("--no-char", action="store_true")
    ap.add_argument("--out", default="runs/bench_bitnet")
    ap.add_argument("--seed", type=int, default=None, help="override every run's seed (default: the configs')")
    ap.add_argument("--reuse", action="store_true", help="read back finished runs (same config) in --out instead of training")
    args = ap.parse_args()
    global REUSE, TIME_THREADS, SEED
    REUSE, TIME_THREADS = args.reuse, args.time_threads
    SEED = [] if args.seed is None else [f"seed={args.seed}"]
    out = Path(args.out)
    lines = ["| run | quality | val/loss | train step (median) | exported size |", "|---|---|---|---|---|"]

    if not args.no_digits:
        ep = [f"max_epochs={args.digits_epochs}"]
        dense, _ = train("digits.yaml", out / "digits_dense", ep + ["gate=null"])
        b158, cfg158 = train("digits_bitnet.yaml", out / "digits_b158", ep)
        b1, cfg1 = train("digits_bitnet.yaml", out / "digits_b1", ep + ["bitnet.weight_bits=1"])
        kd, cfgkd = train("digits_bitnet_kd.yaml", out / "digits_b158_kd", ep + [f"loss.teacher={out / 'digits_dense'}"])

        def batch():
            g = torch.Generator().manual_seed(0)
            return torch.rand(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)
        t_dense, t_bit = step_times(cfg158, batch, args.time_steps)
        lines.append(row(f"digits dense ({args.digits_epochs} epochs)", "val/accuracy", dense, t_dense, "-"))
        lines.append(row("digits BitNet 1.58", "val/accuracy", b158, t_bit, exported_size(cfg158, out / "digits_b158")))
        lines.append(row("digits BitNet 1", "val/accuracy", b1, None, exported_size(cfg1, out / "digits_b1")))
        lines.append(row("digits BitNet 1.58 + KD", "val/accuracy", kd, None, exported_size(cfgkd, out / "digits_b158_kd")))
        print("\n".join(lines[-4:]), file=sys.stderr, flush=True)
        gap = (dense["val/accuracy"] - b158["val/accuracy"]) * 100
        gap_kd = (dense["val/accuracy"] - kd["val/accuracy"]) * 100
        lines.append(f"|   digits gaps (points below dense) | 1.58: {gap:+.2f} (target <= 2) · 1.58+KD: {gap_kd:+.2f} "
                     f"(target <= 1) · 1: {(dense['val/accuracy'] - b1['val/accuracy']) * 100:+.2f} | | | |")

    if not args.no_char:
        steps = [f"max_steps={args.char_steps}", f"schedule.total_steps={args.char_steps}",
                 f"validation.every_steps={min(250, args.char_steps)}", f"checkpoint.every_steps={min(250, args.char_steps)}"]
        dense, cfgd = train("char_lm_cpu.yaml", out / "char_dense", steps)
        bit, cfgb = train("char_lm_bitnet.yaml", out / "char_b158", steps)

        def batch():
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, 65, (12, 65), generator=g)
            return ids[:, :-1], ids[:, 1:]
        t_dense, t_bit = step_times(cfgb, batch, args.time_steps)
        lines.append(row(f"char_lm dense ({args.char_steps} steps)", "val/loss", dense, t_dense, "-"))
        lines.append(row("char_lm BitNet 1.58", "val/loss", bit, t_bit, exported_size(cfgb, out / "char_b158")))
        lines.append(f"|   char_lm | BitNet/dense val loss {bit['val/loss'] / dense['val/loss']:.3f} (target <= 1.10) · "
                     f"step time ratio {t_bit / t_dense:.2f} (target <= 2) | | | |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
