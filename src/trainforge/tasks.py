"""How a batch becomes a loss (training) and summed statistics (evaluation).

A task never calls ``.item()``: it returns tensors, and the trainer syncs only at log time.
Built in: ``classification`` (cross-entropy; accuracy and macro-F1 in evaluation),
``language_model`` (next-token cross-entropy on [B, T+1] token batches; tokens/s),
``regression`` (MSE; MAE in evaluation), ``contrastive`` (InfoNCE on two views), or any callable
``(model, batch) -> (loss, metrics)``. A task may carry a configured training loss (``task.loss``,
from ``trainforge.losses``) and extra weighted terms (``add_term``, e.g. BitNet's quantization
regularizer); their parts are summed as tensors in ``task.loss_parts`` and logged at the log interval.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data.errors import DataError
from .importing import import_object  # re-exported: run.py resolves model: and data: references with it
from .losses import InfoNCE, Loss, PartsMeter


@dataclass
class StepOutput:
    loss: torch.Tensor
    samples: int
    tokens: int = 0
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # named loss terms (detached), logged as loss/<name>


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
        for xk, yk in (("x", "y"), ("input", "target"), ("inputs", "targets"), ("input", "label"), ("inputs", "labels"),
                       ("input_ids", "labels"), ("input_ids", "label")):
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
        "expected a batch of (inputs, targets) or a dict with keys x/y (or input/target, inputs/labels, "
        "input_ids/labels); "
        f"got {type(batch).__name__}" + (f" with keys {sorted(batch)}" if isinstance(batch, dict) else "")
        + (f"; field(s) {text} hold text: {TEXT_FIX}" if text else "")
    )


def call_model(model: nn.Module, x: Any, batch: Any) -> torch.Tensor:
    """``model(x)``, with ``attention_mask=`` when the batch has one and the model's forward takes it;
    the logits of a Hugging Face-style output (``.logits`` or ``["logits"]``)."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    out = model(x, attention_mask=mask) if mask is not None and _takes_attention_mask(model) else model(x)
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    if logits is None:
        raise TypeError(f"the model returned a {type(out).__name__}: expected logits (a tensor, or an output "
                        "with .logits)")
    return logits


_MASK_ARG: dict[type, bool] = {}


def _takes_attention_mask(model: nn.Module) -> bool:
    inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper takes anything
    kind = type(inner)
    if kind not in _MASK_ARG:
        _MASK_ARG[kind] = "attention_mask" in inspect.signature(inner.forward).parameters
    return _MASK_ARG[kind]


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
    loss: Loss | None = None  # a configured training loss; None: the task's own default

    def add_term(self, name: str, weight: float, fn: Callable[[nn.Module], torch.Tensor]) -> None:
        """Add ``weight * fn(model)`` to the training loss (logged as ``loss/<name>``); replaces a term of that name."""
        self.terms = {**getattr(self, "terms", {}), name: (float(weight), fn)}

    @property
    def loss_parts(self) -> PartsMeter:
        meter = self.__dict__.get("_loss_parts")
        if meter is None:
            meter = self.__dict__["_loss_parts"] = PartsMeter()
        return meter

    def _total(self, model: nn.Module, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """The loss plus the weighted extra terms (training only: under no_grad, evaluation, neither
        terms nor parts); the parts are summed as tensors, never read back here."""
        if not torch.is_grad_enabled():
            return loss, parts
        terms = self.__dict__.get("terms")
        if terms:
            parts = dict(parts)
            for name, (weight, fn) in terms.items():
                value = fn(model)
                parts[name] = value.detach()
                loss = loss + weight * value
        if parts:
            self.loss_parts.add(parts)
        return loss, parts

    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        raise NotImplementedError

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Sums over the batch (summed again over batches); ``count`` is the denominator."""
        out = self.train_step(model, batch)
        return {"loss_sum": out.loss.detach().float() * out.samples, "count": torch.tensor(float(out.samples))}

    def summarize(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        count = max(float(sums["count"]), 1.0)
        return {"val/loss": float(sums["loss_sum"]) / count}


def check_class_targets(logits: torch.Tensor, y: torch.Tensor) -> None:
    """Class indices ``[B]`` (int64) for logits ``[B, C]``: a ``[B, 1]`` column or float labels fail
    here with the fix, not inside cross_entropy."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"classification targets must be a tensor of class indices, got {type(y).__name__}")
    if y.dim() == logits.dim() and y.shape[-1] == 1 and logits.shape[-1] != 1:
        raise ValueError(f"classification targets have shape {list(y.shape)} for logits {list(logits.shape)}: "
                         "they must be class indices of shape [B]; squeeze the last dimension (y.squeeze(-1))")
    if y.is_floating_point() and y.shape != logits.shape:
        raise ValueError(f"classification targets are {str(y.dtype).removeprefix('torch.')} {list(y.shape)}: "
                         "class indices must be integers (y.long()); float targets need the shape of the "
                         f"logits {list(logits.shape)} (class probabilities)")


class Classification(Task):
    name = "classification"

    def __init__(self, num_classes: int | None = None, label_smoothing: float = 0.0, loss: Loss | None = None):
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.loss = loss

    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        x, y = split_batch(batch)
        logits = call_model(model, x, batch)
        check_class_targets(logits, y)
        if self.loss is None:
            loss, parts = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), {}
        else:
            loss, parts = self.loss(logits, y, inputs=x)
        loss, parts = self._total(model, loss, parts)
        return StepOutput(loss, y.shape[0], parts=parts)

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y = split_batch(batch)
        logits = call_model(model, x, batch)
        check_class_targets(logits, y)
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
    """Next-token prediction. A batch is a LongTensor [B, T+1] (inputs = [:, :-1], targets = [:, 1:]),
    a pair (inputs [B, T], targets [B, T]), or a Hugging Face-style dict (``input_ids``, optional
    ``attention_mask`` and ``labels`` aligned with the inputs, -100 ignored). The model returns logits
    [B, T, V] (or an output with ``.logits``)."""

    name = "language_model"

    def __init__(self, loss: Loss | None = None):
        self.loss = loss

    def _logits_and_targets(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        if isinstance(batch, dict) and "input_ids" in batch:
            # Hugging Face's convention: labels align with input_ids (-100 where ignored); the shift is ours.
            ids = batch["input_ids"]
            labels = batch.get("labels", ids)
            return call_model(model, ids, batch)[:, :-1], labels[:, 1:], ids
        x, y = self._inputs(batch)
        return call_model(model, x, batch), y, x

    def _inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, torch.Tensor):
            if batch.dim() != 2 or batch.shape[1] < 2:
                raise ValueError(f"language_model batches must be [B, T+1] token tensors, got shape {tuple(batch.shape)}")
            return batch[:, :-1], batch[:, 1:]
        if isinstance(batch, (tuple, list)) and len(batch) == 1:
            return self._inputs(batch[0])
        return split_batch(batch)

    def _loss(self, model: nn.Module, batch: Any, reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        logits, y, _ = self._logits_and_targets(model, batch)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction=reduction)
        return loss, y

    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        if self.loss is None:
            loss, y = self._loss(model, batch)
            parts: dict[str, torch.Tensor] = {}
        else:
            logits, y, x = self._logits_and_targets(model, batch)
            loss, parts = self.loss(logits, y, inputs=x)  # logits [B, T, V], targets [B, T]
        loss, parts = self._total(model, loss, parts)
        return StepOutput(loss, y.shape[0], y.numel(), parts=parts)

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        loss_sum, y = self._loss(model, batch, reduction="sum")
        return {"loss_sum": loss_sum.float(), "count": torch.tensor(float(y.numel()), device=loss_sum.device)}


class Regression(Task):
    name = "regression"

    def __init__(self, loss: Loss | None = None):
        self.loss = loss

    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        x, y = split_batch(batch)
        pred = call_model(model, x, batch)
        if self.loss is None:
            loss, parts = F.mse_loss(pred, y.reshape(pred.shape).to(pred.dtype)), {}
        else:
            target = y.reshape(pred.shape) if y.numel() == pred.numel() else y  # [N] targets for [N, 1] outputs
            loss, parts = self.loss(pred, target, inputs=x)
        loss, parts = self._total(model, loss, parts)
        return StepOutput(loss, y.shape[0], parts=parts)

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y = split_batch(batch)
        pred = call_model(model, x, batch)
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
            got = f"Tensor{list(loss.shape)} {str(loss.dtype).removeprefix('torch.')}" if isinstance(loss, torch.Tensor) \
                else type(loss).__name__
            raise TypeError(f"task {self.name!r} must return a scalar loss tensor (or (loss, metrics)), got {got}"
                            + (": reduce it, e.g. .mean()" if isinstance(loss, torch.Tensor) else ""))
        return loss, dict(metrics or {})

    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        loss, _ = self._call(model, batch)
        loss, parts = self._total(model, loss, {})
        return StepOutput(loss, batch_size_of(batch), parts=parts)

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


class Contrastive(Task):
    """Two views of the same items per batch, ``(view_a, view_b)``: the model embeds each ([N, D]) and
    the loss (InfoNCE, temperature 0.1, in-batch negatives, by default) pulls matching rows together."""

    name = "contrastive"

    def __init__(self, loss: Loss | None = None):
        self.loss = loss
        self._default = InfoNCE(temperature=0.1)

    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        a, b = split_batch(batch)
        loss, parts = (self.loss or self._default)(model(a), model(b))
        loss, parts = self._total(model, loss, parts if self.loss is not None else {})
        return StepOutput(loss, batch_size_of(a), parts=parts)


TASKS: dict[str, type[Task]] = {"classification": Classification, "language_model": LanguageModel, "regression": Regression,
                                "contrastive": Contrastive}


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
