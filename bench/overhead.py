"""Framework overhead: trainforge vs a hand-written loop on the same model and data.

Interleaved runs (hand, trainforge, hand, trainforge, ...), each timing N optimizer steps from
start to end; prints the median ratio of time per step. trainforge runs with standard logging
(every 10 steps, console + jsonl + csv sinks) and the progress bar on; checkpoints and
validation off on both sides, since the hand loop has none.

    .venv/bin/python bench/overhead.py [--rounds 7] [--case mlp|lm|all]

Targets: ratio <= 1.15 for the tiny MLP (a step well under 1 ms), <= 1.03 for the small transformer.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from trainforge import Callback, TrainConfig, Trainer
from trainforge.data.loader import epoch_seed
from trainforge.recipes.gpt import GPT


class Clock(Callback):
    """Times fit from the first event to the last: setup (run dir, sinks) is not a per-step cost."""

    def on_train_start(self, trainer):
        self.start = time.perf_counter()

    def on_train_end(self, trainer):
        self.elapsed = time.perf_counter() - self.start


def hand_loop(model, inputs, targets, steps, batch_size, lr, loss_fn):
    """What a careful engineer writes by hand: randperm per epoch, index, step, log every 10."""
    # nanoGPT's configure_optimizers: decay matrices, not biases and norms (trainforge's default)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, fused=True)
    n, step, epoch = len(inputs), 0, 0
    start = time.perf_counter()
    while step < steps:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(0, epoch)))
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            loss = loss_fn(model, inputs[idx], targets[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % 10 == 0:
                _ = loss.item()  # the hand loop logs too
            if step == steps:
                break
        epoch += 1
    return time.perf_counter() - start


def trainforge_run(model, inputs, targets, steps, batch_size, lr, task, run_dir):
    cfg = TrainConfig.from_dict({
        "run_dir": run_dir, "max_steps": steps, "batch_size": batch_size, "drop_last": True,
        "optimizer": {"lr": lr, "weight_decay": 0.01}, "schedule": {"name": "constant"},
        "grad": {"clip_norm": 1.0}, "task": task, "checkpoint": {"enabled": False},
        "validation": {"every_epochs": None}, "log": {"level": "standard", "every_steps": 10, "progress": True},
    })
    clock = Clock()
    Trainer(model, cfg, callbacks=[clock]).fit((inputs, targets))
    return clock.elapsed


def mlp_case():
    torch.manual_seed(0)
    x, y = torch.randn(8192, 32), torch.randint(0, 10, (8192,))
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    loss = lambda m, a, b: F.cross_entropy(m(a), b)  # noqa: E731
    return "tiny MLP (32-64-10, batch 64)", model, x, y, 600, 64, 1e-3, "classification", loss


def lm_case():
    torch.manual_seed(0)
    tokens = torch.randint(0, 65, (4096, 65))
    model = GPT(vocab_size=65, context=64, n_layer=4, n_head=4, n_embd=128)
    def loss(m, a, b):
        logits = m(a)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b.reshape(-1))
    return ("small transformer LM (4x128, ctx 64, batch 12)", model, tokens[:, :-1], tokens[:, 1:], 150, 12, 1e-3,
            "language_model", loss)


def measure(case, rounds):
    name, model, x, y, steps, bs, lr, task, loss = case
    ratios, hand_times, tf_times = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds + 1):
            t_hand = hand_loop(copy.deepcopy(model), x, y, steps, bs, lr, loss)
            t_tf = trainforge_run(copy.deepcopy(model), x, y, steps, bs, lr, task, f"{tmp}/r{r}")
            if r == 0:
                continue  # warm-up round: allocator, kernels, imports
            hand_times.append(t_hand / steps)
            tf_times.append(t_tf / steps)
            ratios.append(t_tf / t_hand)
    print(f"{name}: hand {statistics.median(hand_times) * 1e3:.3f} ms/step, "
          f"trainforge {statistics.median(tf_times) * 1e3:.3f} ms/step, "
          f"median ratio {statistics.median(ratios):.3f} (rounds: {', '.join(f'{x:.3f}' for x in ratios)})",
          flush=True)
    return statistics.median(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--case", choices=["mlp", "lm", "all"], default="all")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if args.case in ("mlp", "all"):
        r = measure(mlp_case(), args.rounds)
        print(f"  target <= 1.15: {'PASS' if r <= 1.15 else 'FAIL'}", flush=True)
    if args.case in ("lm", "all"):
        r = measure(lm_case(), args.rounds)
        print(f"  target <= 1.03: {'PASS' if r <= 1.03 else 'FAIL'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
