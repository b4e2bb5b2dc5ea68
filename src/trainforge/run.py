"""From a config to a finished run: resolve recipe defaults, build model and data, fit, report.

This is what the CLI calls; it is also usable from Python (``run_config(cfg)``).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from torch import nn

from .config import ConfigError, DataSpec, TrainConfig, apply_overrides, read_config_file
from .events import Callback
from .recipes.base import RecipeParts
from .tasks import import_object
from .trainer import FitResult, Trainer


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("gate", "grokfast"):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), run_dir: str | None = None) -> TrainConfig:
    """The user's fields over the recipe's defaults (when a recipe is named), then overrides.
    A ``gate`` or ``grokfast`` section replaces the recipe's whole (an MA filter must not inherit
    the default EMA's settings)."""
    data = apply_overrides(copy.deepcopy(raw), overrides)
    if run_dir is not None:
        data["run_dir"] = run_dir
    recipe = data.get("recipe")
    if recipe:
        from .recipes import load_recipe
        data = deep_merge(load_recipe(recipe).DEFAULTS, data)
    return TrainConfig.from_dict(data)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), run_dir: str | None = None) -> TrainConfig:
    return resolve_config(read_config_file(path), overrides, run_dir)


def build_parts(cfg: TrainConfig) -> RecipeParts:
    """Model, data, task and evaluators from a recipe, or from ``model:``/``data:`` references."""
    if cfg.recipe:
        from .recipes import load_recipe
        return load_recipe(cfg.recipe).build(cfg)
    if not cfg.model:
        raise ConfigError("field `model` — name a 'module:callable' that returns an nn.Module, or set `recipe`")
    if cfg.data is None:
        raise ConfigError("field `data` — name a 'module:callable' returning (train, val), or a data spec {path: ...}")
    model = _call(cfg.model, "model", cfg.model_args)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"field `model`: {cfg.model} returned a {type(model).__name__}, not an nn.Module")
    train, val = _data(cfg)
    return RecipeParts(model, train, val, cfg.task)


def _call(ref: str, field_name: str, kwargs: dict[str, Any]) -> Any:
    try:
        fn = import_object(ref)
    except ValueError as e:
        raise ConfigError(f"field `{field_name}`: {e}") from None
    try:
        return fn(**kwargs)
    except TypeError as e:
        raise ConfigError(f"field `{field_name}_args`: calling {ref} failed: {e}") from None


def _data(cfg: TrainConfig) -> tuple[Any, Any]:
    if isinstance(cfg.data, DataSpec) or (isinstance(cfg.data, str) and ":" not in cfg.data):
        from .data.spec import build_data
        spec = cfg.data if isinstance(cfg.data, DataSpec) else {"path": cfg.data}
        return build_data(spec, seed=cfg.seed)
    out = _call(cfg.data, "data", cfg.data_args)
    if isinstance(out, tuple) and len(out) == 2:
        return out
    return out, None


def run_config(cfg: TrainConfig, *, resume: bool = False, callbacks: list[Callback] = (), report: bool = True,
               quiet: bool = False) -> FitResult:
    parts = build_parts(cfg)
    if not quiet:
        info = " · ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in parts.info.items())
        name = cfg.recipe or cfg.model
        print(f"trainforge: {name}{' · ' + info if info else ''} · run dir {cfg.run_dir}", file=sys.stderr)
    trainer = Trainer(parts.model, cfg, task=parts.task, callbacks=list(callbacks), evaluators=parts.evaluators)
    try:
        result = trainer.fit(parts.train_data, parts.val_data, resume_from="latest" if resume else None)
    finally:
        if report:
            write_report_quietly(Path(cfg.run_dir))
    return result


def write_report_quietly(run_dir: Path) -> Path | None:
    """The picture of a run; a plotting failure never fails the run itself."""
    try:
        from .report import write_report
        return write_report([run_dir])
    except Exception as e:  # noqa: BLE001 - reported, not raised
        print(f"trainforge: report not written: {e}", file=sys.stderr)
        return None
