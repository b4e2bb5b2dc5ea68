"""char_lm recipe vs a hand-written nanoGPT-style loop: iterations/s, and validation loss at 2000.

Speed: interleaved rounds (hand, trainforge, hand, ...) of ``--iters`` iterations each, same model,
same data, same optimizer and schedule, evaluation of 20 batches every 250 iterations on both
sides; prints the median ratio of iterations per second (target >= 0.97). trainforge runs the
recipe as `trainforge demo char_lm` would: progress bar, standard logging, checkpoints every 250.
Quality: one full run of the recipe (2000 iterations) and its validation loss at the end
(target <= 1.89; a hand-written nanoGPT loop reaches 1.886 here). ``--full-hand`` also runs the
hand loop for 2000 iterations for a side-by-side loss.

    .venv/bin/python bench/char_lm.py [--iters 300] [--rounds 3] [--no-full] [--full-hand]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from trainforge import Callback, Trainer
from trainforge.recipes import char_lm
from trainforge.run import build_parts, resolve_config

CONTEXT, BATCH, LR, MIN_LR, WARMUP, DECAY_ITERS, EVAL_EVERY, EVAL_BATCHES = 64, 12, 1e-3, 1e-4, 100, 2000, 250, 20


class Clock(Callback):
    def on_train_start(self, trainer):
        self.start = time.perf_counter()

    def on_train_end(self, trainer):
        self.elapsed = time.perf_counter() - self.start


def nanogpt_lr(it: int) -> float:
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > DECAY_ITERS:
        return MIN_LR
    ratio = (it - WARMUP) / (DECAY_ITERS - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def hand_loop(model, train: torch.Tensor, val: torch.Tensor, iters: int, seed: int = 0) -> tuple[float, float]:
    """nanoGPT's train.py, reduced to what this setting uses. Returns (seconds, last val loss)."""
    g = torch.Generator().manual_seed(seed)

    def get_batch(data):
        ix = torch.randint(len(data) - CONTEXT, (BATCH,), generator=g)
        x = torch.stack([data[i:i + CONTEXT] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + CONTEXT] for i in ix])
        return x, y

    def loss_of(x, y):
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.99), fused=True)
    val_loss = float("nan")
    start = time.perf_counter()
    for it in range(iters):
        for group in opt.param_groups:
            group["lr"] = nanogpt_lr(it)
        loss = loss_of(*get_batch(train))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (it + 1) % 10 == 0:
            _ = loss.item()  # nanoGPT logs every 10 iterations
        if (it + 1) % EVAL_EVERY == 0 or it + 1 == iters:
            model.eval()
            with torch.no_grad():
                val_loss = statistics.mean(loss_of(*get_batch(val)).item() for _ in range(EVAL_BATCHES))
            model.train()
    return time.perf_counter() - start, val_loss


def recipe_run(iters: int, run_dir: str, progress: bool = True) -> tuple[float, float, torch.nn.Module]:
    """The char_lm recipe through the Trainer, as the CLI builds it. Returns (seconds, val loss, model)."""
    cfg = resolve_config({"recipe": "char_lm", "run_dir": run_dir, "max_steps": iters,
                          "log": {"progress": progress, "sinks": ["console", "jsonl", "csv"]}})
    parts = build_parts(cfg)
    clock = Clock()
    result = Trainer(parts.model, cfg, task=parts.task, callbacks=[clock]).fit(parts.train_data, parts.val_data)
    return clock.elapsed, result.history["val/loss"][-1], parts.model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300, help="iterations per speed round (default 300)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds (default 3)")
    ap.add_argument("--no-full", action="store_true", help="skip the full 2000-iteration recipe run")
    ap.add_argument("--full-hand", action="store_true", help="also run the hand loop for 2000 iterations")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    train_np, val_np = char_lm.splits()
    train, val = torch.from_numpy(train_np.astype("int64")), torch.from_numpy(val_np.astype("int64"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config({"recipe": "char_lm", "run_dir": f"{tmp}/probe"})
        ratios = []
        for r in range(args.rounds):
            hand_model = build_parts(cfg).model  # the recipe's own model, same init
            t_hand, _ = hand_loop(hand_model, train, val, args.iters, seed=r)
            t_tf, _, _ = recipe_run(args.iters, f"{tmp}/speed{r}")
            ratios.append(t_hand / t_tf)
            print(f"round {r}: hand {args.iters / t_hand:.2f} it/s ({t_hand / args.iters * 1e3:.1f} ms/it), "
                  f"trainforge {args.iters / t_tf:.2f} it/s ({t_tf / args.iters * 1e3:.1f} ms/it), "
                  f"ratio {t_hand / t_tf:.3f}", flush=True)
        median = statistics.median(ratios)
        print(f"iterations/s ratio trainforge/hand: median {median:.3f} over {args.rounds} rounds of {args.iters} "
              f"(target >= 0.97: {'PASS' if median >= 0.97 else 'FAIL'})", flush=True)
        if args.full_hand:
            t, loss = hand_loop(build_parts(cfg).model, train, val, DECAY_ITERS)
            print(f"hand loop, 2000 iterations: val loss {loss:.4f} in {t:.0f} s ({t / 2000 * 1e3:.1f} ms/it)", flush=True)
        if not args.no_full:
            t, loss, _ = recipe_run(DECAY_ITERS, f"{tmp}/full")
            print(f"char_lm recipe, 2000 iterations: val loss {loss:.4f} in {t:.0f} s ({t / 2000 * 1e3:.1f} ms/it) "
                  f"(target <= 1.89: {'PASS' if loss <= 1.89 else 'FAIL'})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
