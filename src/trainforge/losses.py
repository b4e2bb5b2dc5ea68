"""Losses: cross-entropy with label smoothing, focal, MSE / Huber / L1, InfoNCE, distillation, multi-task.

Each loss is an ``nn.Module`` called as ``loss(output, target, inputs=None) -> (value, parts)``:
``value`` is the scalar to minimise, ``parts`` its named terms (detached tensors, never read back
per step) that the run logs as ``loss/<name>``. Shapes are checked at the call, host side: a wrong
one raises a ValueError naming the loss and both shapes. ``build_loss(cfg.loss)`` makes one from
the config; ``LossPartsLogger`` carries the parts to the train log records at the log interval.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .events import Callback

Parts = dict[str, torch.Tensor]


def _shape_error(name: str, what: str, output: torch.Tensor, target: torch.Tensor) -> ValueError:
    return ValueError(f"loss {name}: input shape {tuple(output.shape)} and target shape {tuple(target.shape)} "
                      f"do not fit: {what}")


def check_class_shapes(name: str, logits: torch.Tensor, target: torch.Tensor) -> None:
    """Logits [..., C] with class indices [...] (or class probabilities [..., C])."""
    if logits.dim() < 1:
        raise _shape_error(name, "expected logits [N, C]", logits, target)
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise _shape_error(name, "class probabilities must have the logits' shape [N, C]", logits, target)
    elif logits.dim() < 2 or target.shape != logits.shape[:-1]:
        raise _shape_error(name, "expected logits [N, C] and class indices [N]", logits, target)


def _flatten_classes(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if target.is_floating_point():
        return logits.reshape(-1, logits.shape[-1]), target.reshape(-1, target.shape[-1])
    return logits.reshape(-1, logits.shape[-1]), target.reshape(-1)


def _class_weight(weights: list[float] | None, logits: torch.Tensor, name: str) -> torch.Tensor | None:
    if weights is None:
        return None
    if len(weights) != logits.shape[-1]:
        raise ValueError(f"loss {name}: {len(weights)} class weights for {logits.shape[-1]} classes (logits shape "
                         f"{tuple(logits.shape)})")
    return torch.tensor(weights, dtype=logits.dtype, device=logits.device)


# -- functions -----------------------------------------------------------------------------------

def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Lin et al. 2017: ``mean(-w_y * (1 - p_y)^gamma * log p_y)`` over class-index targets
    (weighted mean ``sum / sum(w_y)`` with class weights, as ``F.cross_entropy`` does)."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    loss = -((1 - logp.exp()).clamp(min=0) ** gamma) * logp
    if weight is None:
        return loss.mean()
    w = weight[target]
    return (w * loss).sum() / w.sum()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives: row i of ``a`` and ``b`` are a positive pair,
    every other row a negative; cosine similarities divided by ``temperature``."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    logits = a @ b.T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton et al. 2015: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, mean over rows."""
    s = F.log_softmax(student.float() / temperature, dim=-1).reshape(-1, student.shape[-1])
    t = F.log_softmax(teacher.float() / temperature, dim=-1).reshape(-1, teacher.shape[-1])
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature ** 2


# -- modules -------------------------------------------------------------------------------------

class Loss(nn.Module):
    """Base: ``forward(output, target, inputs=None) -> (value, parts)``."""

    name = "loss"
    kind = "classification"  # which task's outputs it scores: classification | regression | contrastive | any


class CrossEntropy(Loss):
    name = "cross_entropy"

    def __init__(self, label_smoothing: float = 0.0, class_weights: list[float] | None = None):
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.class_weights = class_weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor, inputs: Any = None) -> tuple[torch.Tensor, Parts]:
        check_class_shapes(self.name, logits, target)
        lg, tg = _flatten_classes(logits, target)
        loss = F.cross_entropy(lg, tg, weight=_class_weight(self.class_weights, lg, self.name),
                               label_smoothing=self.label_smoothing)
        return loss, {"ce": loss.detach()}


class Focal(Loss):
    name = "focal"

    def __init__(self, gamma: float = 2.0, class_weights: list[float] | None = None):
        super().__init__()
        self.gamma = float(gamma)
        self.class_weights = class_weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor, inputs: Any = None) -> tuple[torch.Tensor, Parts]:
        check_class_shapes(self.name, logits, target)
        if target.is_floating_point():
            raise _shape_error(self.name, "focal takes class indices [N], not probabilities", logits, target)
        lg, tg = _flatten_classes(logits, target)
        loss = focal_loss(lg, tg, self.gamma, _class_weight(self.class_weights, lg, self.name))
        return loss, {"focal": loss.detach()}


class _Pointwise(Loss):
    kind = "regression"
    part = "mse"

    def _fn(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pred: torch.Tensor, target: torch.Tensor, inputs: Any = None) -> tuple[torch.Tensor, Parts]:
        if pred.shape != target.shape:
            raise _shape_error(self.name, "prediction and target must have the same shape", pred, target)
        loss = self._fn(pred, target.to(pred.dtype))
        return loss, {self.part: loss.detach()}


class MSE(_Pointwise):
    name = part = "mse"

    def _fn(self, pred, target):
        return F.mse_loss(pred, target)


class Huber(_Pointwise):
    name = part = "huber"

    def __init__(self, delta: float = 1.0):
        super().__init__()
        self.delta = float(delta)

    def _fn(self, pred, target):
        return F.huber_loss(pred, target, delta=self.delta)


class L1(_Pointwise):
    name = part = "l1"

    def _fn(self, pred, target):
        return F.l1_loss(pred, target)


class InfoNCE(Loss):
    """Scores two embeddings [N, D] of the same N items (output and target: the two views)."""

    name = "infonce"
    kind = "contrastive"

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, a: torch.Tensor, b: torch.Tensor, inputs: Any = None) -> tuple[torch.Tensor, Parts]:
        if a.dim() != 2 or a.shape != b.shape:
            raise _shape_error(self.name, "expected two embeddings [N, D] of the same shape", a, b)
        loss = info_nce(a, b, self.temperature)
        return loss, {"infonce": loss.detach()}


class Distillation(Loss):
    """``alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * CE(student, labels)``.

    The teacher (any module mapping the task's inputs to logits) runs under ``torch.no_grad()`` in
    eval mode; it is held outside this module's tree, so it is neither trained nor saved in the
    student's checkpoint. It is moved to the student's device on first use.
    """

    name = "distill"

    def __init__(self, teacher: nn.Module, alpha: float = 0.5, temperature: float = 2.0, label_smoothing: float = 0.0):
        super().__init__()
        if not 0 <= alpha <= 1:
            raise ValueError(f"loss distill: alpha must be in [0, 1], got {alpha}")
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.__dict__["teacher"] = teacher  # not a submodule: no parameters, no state_dict entries
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.label_smoothing = float(label_smoothing)
        self._teacher_device: torch.device | None = None

    def teacher_logits(self, inputs: Any, device: torch.device) -> torch.Tensor:
        if inputs is None:
            raise ValueError("loss distill: the teacher needs the batch inputs (the task passes them as inputs=)")
        teacher = self.teacher
        if self._teacher_device != device:
            teacher.to(device)
            self._teacher_device = device
        if teacher.training:
            teacher.eval()
        with torch.no_grad():
            return teacher(inputs)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, inputs: Any = None,
                teacher_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, Parts]:
        check_class_shapes(self.name, logits, target)
        t = self.teacher_logits(inputs, logits.device) if teacher_logits is None else teacher_logits
        if t.numel() != logits.numel():
            raise ValueError(f"loss distill: student logits shape {tuple(logits.shape)} and teacher logits shape "
                             f"{tuple(t.shape)} do not fit")
        kd = kd_kl(logits, t.reshape(logits.shape), self.temperature)
        lg, tg = _flatten_classes(logits, target)
        ce = F.cross_entropy(lg, tg, label_smoothing=self.label_smoothing)
        return self.alpha * kd + (1 - self.alpha) * ce, {"kd": kd.detach(), "ce": ce.detach()}


def _select(value: Any, key: int | str | None) -> Any:
    return value if key is None else value[key]


class MultiTask(Loss):
    """A weighted sum of named losses. ``weighting="fixed"``: ``sum_i w_i * L_i``. ``"uncertainty"``
    (Kendall et al. 2018, homoscedastic uncertainty, with ``s_i = log sigma_i^2`` learned):
    ``sum_i exp(-s_i) * L_i + s_i`` — the paper's form with its 1/2 factors dropped (a constant
    factor), ``s_i`` starting at 0 (weight 1). ``s`` is a Parameter: attach the loss to the model
    (the trainer does) so the optimizer trains it and the checkpoint saves it.
    Each part may score one element of a tuple/dict output and target (``selectors``).
    """

    name = "multitask"
    kind = "any"

    def __init__(self, losses: dict[str, Loss], weights: dict[str, float] | None = None, weighting: str = "fixed",
                 selectors: dict[str, tuple[int | str | None, int | str | None]] | None = None):
        super().__init__()
        if not losses:
            raise ValueError("loss multitask: give at least one part")
        if weighting not in ("fixed", "uncertainty"):
            raise ValueError(f"loss multitask: weighting must be fixed or uncertainty, got {weighting!r}")
        self.parts = nn.ModuleDict(losses)
        self.names = list(losses)
        self.weighting = weighting
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in self.names}
        self.selectors = dict(selectors or {})
        if weighting == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(len(self.names)))
        else:
            self.log_vars = None

    def forward(self, output: Any, target: Any, inputs: Any = None) -> tuple[torch.Tensor, Parts]:
        total: torch.Tensor | None = None
        parts: Parts = {}
        for i, name in enumerate(self.names):
            out_key, tgt_key = self.selectors.get(name, (None, None))
            value, _ = self.parts[name](_select(output, out_key), _select(target, tgt_key), inputs=inputs)
            parts[name] = value.detach()
            if self.log_vars is not None:
                s = self.log_vars[i]
                term = torch.exp(-s) * value + s
                parts[f"log_var/{name}"] = s.detach()
            else:
                term = value * self.weights[name] if self.weights[name] != 1.0 else value
            total = term if total is None else total + term
        return total, parts


# -- from the config -----------------------------------------------------------------------------

def build_loss(cfg: Any, teacher_loader: Callable[[str], nn.Module] | None = None) -> Loss:
    """A Loss from a ``LossConfig``; ``teacher_loader(path) -> module`` resolves ``distill``'s teacher."""
    name = cfg.name
    ls = cfg.label_smoothing
    if name in ("cross_entropy", "label_smoothing"):
        default = 0.1 if name == "label_smoothing" else 0.0
        loss = CrossEntropy(default if ls is None else ls, cfg.class_weights)
        loss.name = name
        return loss
    if name == "focal":
        return Focal(cfg.gamma, cfg.class_weights)
    if name == "mse":
        return MSE()
    if name == "huber":
        return Huber(cfg.delta)
    if name == "l1":
        return L1()
    if name == "infonce":
        return InfoNCE(cfg.temperature)
    if name == "distill":
        if teacher_loader is None:
            raise ValueError("loss distill: no way to load the teacher here; pass a Distillation(teacher=module)")
        return Distillation(teacher_loader(cfg.teacher), cfg.alpha, cfg.temperature, ls or 0.0)
    if name == "multitask":
        parts = {k: build_loss(v, teacher_loader) for k, v in cfg.losses.items()}
        selectors = {k: (v.output, v.target) for k, v in cfg.losses.items()}
        return MultiTask(parts, cfg.weights, cfg.weighting, selectors)
    raise ValueError(f"unknown loss {name!r}")


def loss_kinds(loss: Loss) -> set[str]:
    if isinstance(loss, MultiTask):
        return set().union(*(loss_kinds(p) for p in loss.parts.values()))
    return {loss.kind}


# -- logging the parts ---------------------------------------------------------------------------

class PartsMeter:
    """Running sums of loss parts as device tensors (no sync); ``flush`` reads them at log time."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, parts: Parts) -> None:
        for k, v in parts.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def flush(self) -> dict[str, float]:
        if not self.count:
            return {}
        out = {f"loss/{k}": float(v) / self.count for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: v.detach().cpu().clone() for k, v in self.sums.items()}, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: v.clone() for k, v in state.get("sums", {}).items()}
        self.count = int(state.get("count", 0))


class LossPartsLogger(Callback):
    """Adds a task's loss parts (``loss/ce``, ``loss/kd``, ``loss/quant``, ...), averaged over the
    micro-batches since the last log, to each train log record. Its pending sums are checkpointed,
    so a resumed run logs the same values as an uninterrupted one."""

    def __init__(self, meter: PartsMeter):
        self.meter = meter

    def log_values(self, trainer: Any) -> dict[str, float]:
        return self.meter.flush()

    def state_dict(self) -> dict[str, Any]:
        return self.meter.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.meter.load_state_dict(state)
