"""Model transforms that run once at build time, before the optimizer is made (torchtitan's model
converters): BitNet conversion (``bitnet:``) and the configured training loss (``loss:``).

``apply_model_transforms(model, cfg, task=..., callbacks=...)`` is what ``Trainer.__init__`` calls,
so ``Trainer(model, cfg)`` and the CLI behave alike. It returns the (converted) model, the task
(carrying the loss and the BitNet regularizer term) and the callbacks with the run-time parts added
(phase-in and sparsity logging, loss-part logging). A loss with parameters of its own (learned
multi-task weights) is attached to the model as the submodule ``trainforge_loss``: the optimizer
trains it, the checkpoint saves it, resume restores it, like any weight. Calling it again on an
already converted model changes nothing.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Iterable

from torch import nn

from .config import ConfigError
from .events import Callback
from .losses import LossPartsLogger, build_loss, loss_kinds
from .quant import BitNetCallback, bit_layers, convert_to_bitnet, quantization_regularizer

LOSS_MODULE = "trainforge_loss"

# which loss kinds a built-in task can score
TASK_KINDS = {"classification": {"classification"}, "language_model": {"classification"},
              "regression": {"regression"}, "contrastive": {"contrastive"}}


def convert_from_config(model: nn.Module, bitnet: Any) -> list[str]:
    """``convert_to_bitnet`` with the settings of a ``BitNetConfig``; a model with nothing to convert
    is a ConfigError (a run that claims BitNet must quantize something)."""
    converted = convert_to_bitnet(model, bitnet.weight_bits, bitnet.skip, act_bits=bitnet.act_bits, norm=bitnet.norm,
                                  stochastic=bitnet.stochastic_rounding, eps=bitnet.eps)
    if not converted and not any(True for _ in bit_layers(model)):
        raise ConfigError(f"field `bitnet`: the model has no nn.Linear layer to convert (skip: {bitnet.skip}); "
                          "BitNet needs linear layers")
    return converted


def apply_model_transforms(model: nn.Module, cfg: Any, *, task: Any = None,
                           callbacks: Iterable[Callback] = ()) -> tuple[nn.Module, Any, list[Callback]]:
    callbacks = list(callbacks)
    bitnet, loss_cfg = getattr(cfg, "bitnet", None), getattr(cfg, "loss", None)
    if bitnet is None and loss_cfg is None:
        return model, task, callbacks
    if bitnet is not None:
        convert_from_config(model, bitnet)
        if not any(isinstance(cb, BitNetCallback) for cb in callbacks):
            callbacks.append(BitNetCallback(bitnet.phase_in_steps))
    has_regularizer = bitnet is not None and bitnet.regularizer > 0
    if loss_cfg is None and not has_regularizer:
        return model, task, callbacks
    from .tasks import CallableTask, make_task  # tasks import losses; imported here to keep this module's imports light
    task_obj = make_task(task if task is not None else cfg.task)
    if loss_cfg is not None:
        if isinstance(task_obj, CallableTask):
            raise ConfigError(f"field `loss`: the task {task_obj.name!r} computes its own loss; `loss:` applies to "
                              f"the built-in tasks ({', '.join(TASK_KINDS)})")
        allowed = TASK_KINDS.get(task_obj.name)
        try:
            loss = build_loss(loss_cfg, teacher_loader=load_teacher)
        except ValueError as e:
            raise ConfigError(f"field `loss`: {e}") from None
        kinds = loss_kinds(loss) - {"any"}
        if allowed is not None and not kinds <= allowed:
            raise ConfigError(f"field `loss.name`: {loss_cfg.name} scores {', '.join(sorted(kinds))} outputs; the task "
                              f"{task_obj.name} needs a {' or '.join(sorted(allowed))} loss")
        task_obj.loss = loss
        if any(True for _ in loss.parameters()):
            model.add_module(LOSS_MODULE, loss)  # trained by the optimizer, saved in the checkpoint
    if has_regularizer:
        task_obj.add_term("quant", bitnet.regularizer,
                          partial(quantization_regularizer, target_sparsity=bitnet.target_sparsity))
    if not any(isinstance(cb, LossPartsLogger) for cb in callbacks):
        callbacks.append(LossPartsLogger(task_obj.loss_parts))
    return model, task_obj, callbacks


def load_teacher(path: str | Path) -> nn.Module:
    """A teacher model from a trainforge run dir (its latest valid checkpoint) or checkpoint dir.

    The architecture comes from the teacher run's own ``config.yaml`` (recipe or ``model:``, with its
    ``bitnet:`` if any); the weights from ``model.safetensors`` (safetensors, checksum-verified).
    """
    from .checkpoint import CheckpointManager, load_checkpoint
    from .run import build_parts, load_config

    p = Path(path).expanduser()
    if (p / "config.yaml").is_file() and (p / "checkpoints").is_dir():
        run_dir = p
        info = CheckpointManager(p / "checkpoints", keep_last=None).latest_valid()
        if info is None:
            raise ConfigError(f"field `loss.teacher`: no valid checkpoint in {p / 'checkpoints'}")
        checkpoint = Path(info.path)
    elif (p / "model.safetensors").is_file():
        checkpoint, run_dir = p, p.parent.parent
    else:
        raise ConfigError(f"field `loss.teacher`: {p} is neither a trainforge run dir (config.yaml + checkpoints/) "
                          "nor a checkpoint dir (model.safetensors)")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"field `loss.teacher`: no config.yaml in {run_dir} to build the teacher's architecture from")
    cfg = load_config(run_dir / "config.yaml", run_dir=str(run_dir))
    model = build_parts(cfg).model
    if cfg.bitnet is not None:
        convert_from_config(model, cfg.bitnet)
    weights = {k: v for k, v in load_checkpoint(checkpoint)["model"].items() if not k.startswith(LOSS_MODULE + ".")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ConfigError(f"field `loss.teacher`: the weights in {checkpoint} do not fit the architecture of "
                          f"{run_dir / 'config.yaml'}: {str(e).splitlines()[0]}") from None
    return model.eval()
