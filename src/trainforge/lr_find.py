"""The learning-rate range test (Smith 2015; fastai's ``lr_find``): train a copy of the model for a
few steps while the lr grows exponentially, record the loss, and suggest the lr where the loss
falls fastest. The model, its optimizer and the run directory are left untouched (a deep copy
trains; every RNG stream is restored)."""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .config import TrainConfig
from .data.loader import loader_for, prepare_epoch
from .devices import autocast_factory, resolve_device, to_device
from .fileio import atomic_write_bytes
from .optim import build_optimizer
from .state import capture_rng, restore_rng
from .tasks import batch_size_of, make_task


@dataclass
class LrFindResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None  # the lr at the steepest descent of the smoothed loss
    stopped: str  # why the sweep ended


def lr_range_test(model: nn.Module, cfg: TrainConfig, train_data: Any, *, task: Any = None, min_lr: float = 1e-7,
                  max_lr: float = 10.0, steps: int = 100, divergence: float = 4.0, beta: float = 0.9) -> LrFindResult:
    """Sweep ``steps`` lrs from ``min_lr`` to ``max_lr`` (geometric), one optimizer step each, on a
    copy of ``model`` with the config's optimizer; stop early when the smoothed loss exceeds
    ``divergence`` times its best (or turns non-finite)."""
    if not (0 < min_lr < max_lr) or not all(map(math.isfinite, (min_lr, max_lr))):
        raise ValueError(f"need 0 < min_lr < max_lr, both finite; got {min_lr} and {max_lr}")
    if steps < 5:
        raise ValueError(f"steps must be >= 5 to find a slope, got {steps}")
    device = resolve_device(cfg.device)
    trial = copy.deepcopy(model).to(device).train()
    optimizer = build_optimizer(trial, cfg.optimizer)
    task_ = make_task(task if task is not None else cfg.task)
    autocast = autocast_factory(cfg.precision, device)
    loader = loader_for(train_data, cfg, train=True)
    rng = capture_rng()
    lrs, losses, smoothed, avg, best, stopped = [], [], [], 0.0, math.inf, f"{steps} steps done"
    try:
        for i, batch in enumerate(_batches(loader, cfg.seed, steps)):
            lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast():
                loss = task_.train_step(trial, to_device(batch, device)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())  # a diagnostic tool: one sync per step is fine here
            if not math.isfinite(value):
                stopped = f"loss not finite at lr {lr:.3g}"
                break
            avg = beta * avg + (1 - beta) * value
            debiased = avg / (1 - beta ** (i + 1))
            lrs.append(lr), losses.append(value), smoothed.append(debiased)
            best = min(best, debiased)
            if debiased > divergence * best and i > 5:
                stopped = f"loss diverged (> {divergence:g}x its best) at lr {lr:.3g}"
                break
    finally:
        restore_rng(rng)
    return LrFindResult(lrs, losses, smoothed, suggest(lrs, smoothed), stopped)


def _batches(loader: Any, seed: int, steps: int):
    """``steps`` non-empty batches, going round the data as many epochs as it takes."""
    taken, epoch = 0, 0
    while taken < steps:
        prepare_epoch(loader, seed, epoch)
        got = 0
        for batch in loader:
            if batch_size_of(batch):
                got += 1
                taken += 1
                yield batch
                if taken == steps:
                    return
        if got == 0:
            raise ValueError("lr-find: the training data is empty")
        epoch += 1


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The lr where the smoothed loss falls fastest against log(lr), before its minimum."""
    if len(lrs) < 5:
        return None
    stop = int(np.argmin(smoothed)) + 1
    if stop < 3:
        return None
    slopes = np.gradient(np.asarray(smoothed[:stop]), np.log(np.asarray(lrs[:stop])))
    return float(lrs[int(np.argmin(slopes))])


def plot(result: LrFindResult, out: Path | str) -> Path:
    """The loss against the lr (log axis), raw and smoothed, with the suggestion marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib only when drawing
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), layout="constrained", dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="0.7", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="C3", linestyle="--", label=f"suggested lr {result.suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr range test ({result.stopped})", loc="left", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
    return out
