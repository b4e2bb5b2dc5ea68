"""How a batch becomes a loss (training) and summed statistics (evaluation).

A task never calls ``.item()``: it returns tensors, and the trainer syncs only at log time.
Built in: ``classification`` (cross-entropy; accuracy and macro-F1 in evaluation),
``language_model`` (next-token cross-entropy on [B, T+1] token batches; tokens/s),
``regression`` (MSE; MAE in evaluation), or any callable ``(model, batch) -> (loss, metrics)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data.errors import DataError
from .importing import import_object  # re-exported: run.py resolves model: and data: references with it


@dataclass
class StepOutput:
    loss: torch.Tensor
    samples: int
    tokens: int = 0


TEXT_FIX = ("the built-in tasks train on tensors: tokenize text before it reaches them (a `data: module:callable` "
            "returning token tensors, or a dataset whose items are tensors), or name a task 'module:callable' "
            "that takes the text batch")


def _is_text(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], str)


def split_batch(batch: Any) -> tuple[Any, Any]:
    """(inputs, targets) from a tuple/list of two, or a dict with x/y, input/target or inputs/labels keys.
    Text (a list of strings) is refused with what to do about it."""
    pair = None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        pair = (("inputs", batch[0]), ("targets", batch[1]))
    elif isinstance(batch, dict):
        for xk, yk in (("x", "y"), ("input", "target"), ("inputs", "targets"), ("input", "label"), ("inputs", "labels")):
            if xk in batch and yk in batch:
                pair = ((xk, batch[xk]), (yk, batch[yk]))
                break
    if pair is not None:
        for name, value in pair:
            if _is_text(value):
                raise DataError(f"batch field {name!r} holds text ({value[0]!r}, ...): {TEXT_FIX}")
        return pair[0][1], pair[1][1]
    text = [k for k, v in batch.items() if _is_text(v)] if isinstance(batch, dict) else []
    raise DataError(
        "expected a batch of (inputs, targets) or a dict with keys x/y (or input/target, inputs/labels); "
        f"got {type(batch).__name__}" + (f" with keys {sorted(batch)}" if isinstance(batch, dict) else "")
        + (f"; field(s) {text} hold text: {TEXT_FIX}" if text else "")
    )


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor, or the length of its first column
    of text or numbers (a list of strings is a batch of strings, not an empty batch)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, (tuple, list)) and batch:
        if isinstance(batch[0], (str, bytes, int, float)):
            return len(batch)
        return batch_size_of(batch[0])
    if isinstance(batch, dict) and batch:
        return batch_size_of(next(iter(batch.values())))
    return 0


class Task:
    name = "task"

    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        raise NotImplementedError

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Sums over the batch (summed again over batches); ``count`` is the denominator."""
        out = self.train_step(model, batch)
        return {"loss_sum": out.loss.detach().float() * out.samples, "count": torch.tensor(float(out.samples))}

    def summarize(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        count = max(float(sums["count"]), 1.0)
        return {"val/loss": float(sums["loss_sum"]) / count}


class Classification(Task):
    name = "classification"

    def __init__(self, num_classes: int | None = None, label_smoothing: float = 0.0):
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        x, y = split_batch(batch)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return StepOutput(loss, y.shape[0])

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y = split_batch(batch)
        logits = model(x)
        k = self.num_classes or logits.shape[-1]
        pred = logits.argmax(-1)
        # A confusion matrix sums over batches and gives accuracy and macro-F1 exactly at the end.
        confusion = torch.bincount(y.reshape(-1) * k + pred.reshape(-1), minlength=k * k).reshape(k, k)
        return {
            "loss_sum": F.cross_entropy(logits, y, reduction="sum").float(),
            "count": torch.tensor(float(y.numel()), device=logits.device),
            "confusion": confusion,
        }

    def summarize(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        out = super().summarize(sums)
        cm = sums["confusion"].double().cpu()
        tp = cm.diag()
        total = cm.sum()
        out["val/accuracy"] = float(tp.sum() / total) if total > 0 else 0.0
        precision = tp / cm.sum(0).clamp(min=1)
        recall = tp / cm.sum(1).clamp(min=1)
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
        present = (cm.sum(1) + cm.sum(0)) > 0  # macro over classes that occur in targets or predictions
        out["val/f1"] = float(f1[present].mean()) if present.any() else 0.0
        return out


class LanguageModel(Task):
    """Next-token prediction. A batch is a LongTensor [B, T+1] (inputs = [:, :-1], targets = [:, 1:])
    or a pair (inputs [B, T], targets [B, T]). The model returns logits [B, T, V]."""

    name = "language_model"

    def _inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, torch.Tensor):
            if batch.dim() != 2 or batch.shape[1] < 2:
                raise ValueError(f"language_model batches must be [B, T+1] token tensors, got shape {tuple(batch.shape)}")
            return batch[:, :-1], batch[:, 1:]
        if isinstance(batch, (tuple, list)) and len(batch) == 1:
            return self._inputs(batch[0])
        return split_batch(batch)

    def _loss(self, model: nn.Module, batch: Any, reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._inputs(batch)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction=reduction)
        return loss, y

    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        loss, y = self._loss(model, batch)
        return StepOutput(loss, y.shape[0], y.numel())

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        loss_sum, y = self._loss(model, batch, reduction="sum")
        return {"loss_sum": loss_sum.float(), "count": torch.tensor(float(y.numel()), device=loss_sum.device)}


class Regression(Task):
    name = "regression"

    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        x, y = split_batch(batch)
        pred = model(x)
        return StepOutput(F.mse_loss(pred, y.reshape(pred.shape).to(pred.dtype)), y.shape[0])

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y = split_batch(batch)
        pred = model(x)
        y = y.reshape(pred.shape).to(pred.dtype)
        return {"loss_sum": F.mse_loss(pred, y, reduction="sum").float(),
                "abs_sum": (pred - y).abs().sum().float(),
                "count": torch.tensor(float(y.numel()), device=pred.device)}

    def summarize(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        out = super().summarize(sums)
        out["val/mae"] = float(sums["abs_sum"]) / max(float(sums["count"]), 1.0)
        return out


class CallableTask(Task):
    """Wraps ``fn(model, batch) -> loss`` or ``-> (loss, metrics)``; evaluation averages metrics over batches."""

    def __init__(self, fn: Callable[[nn.Module, Any], Any]):
        self.fn = fn
        self.name = getattr(fn, "__name__", "custom")

    def _call(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        out = self.fn(model, batch)
        loss, metrics = (out if isinstance(out, tuple) else (out, {}))
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError(f"task {self.name!r} must return a scalar loss tensor (or (loss, metrics)), got {type(loss).__name__}")
        return loss, dict(metrics or {})

    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        loss, _ = self._call(model, batch)
        return StepOutput(loss, batch_size_of(batch))

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        loss, metrics = self._call(model, batch)
        sums = {"loss_sum": loss.detach().float(), "count": torch.tensor(1.0)}
        for k, v in metrics.items():
            sums[f"metric:{k}"] = torch.as_tensor(v, dtype=torch.float32).detach()
        return sums

    def summarize(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        n = max(float(sums["count"]), 1.0)
        out = {"val/loss": float(sums["loss_sum"]) / n}
        for k, v in sums.items():
            if k.startswith("metric:"):
                name = k[len("metric:"):]
                out[name if "/" in name else f"val/{name}"] = float(v) / n
        return out


TASKS: dict[str, type[Task]] = {"classification": Classification, "language_model": LanguageModel, "regression": Regression}


def make_task(task: str | Task | Callable) -> Task:
    if isinstance(task, Task):
        return task
    if isinstance(task, str):
        if task in TASKS:
            return TASKS[task]()
        if ":" in task:
            return make_task(import_object(task))
        raise ValueError(f"unknown task {task!r}: use {', '.join(TASKS)}, 'module:callable', or a callable")
    if callable(task):
        return CallableTask(task)
    raise TypeError(f"task must be a name, a Task or a callable, got {type(task).__name__}")
