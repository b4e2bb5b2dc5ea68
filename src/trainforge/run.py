"""From a config to a finished run: resolve recipe defaults, build model and data, fit, report.

This is what the CLI calls; it is also usable from Python (``run_config(cfg)``).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from torch import nn

from .config import ConfigError, DataSpec, TrainConfig
from .events import Callback
from .recipes.base import RecipeParts
from .tasks import import_object
from .results import FitResult
from .trainer import Trainer
from .user_errors import user_code_error


def resolve_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), run_dir: str | None = None) -> TrainConfig:
    """The user's fields over the recipe's defaults (when a recipe is named), then overrides."""
    return TrainConfig.from_dict(raw, overrides, run_dir)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), run_dir: str | None = None) -> TrainConfig:
    return TrainConfig.from_file(path, overrides, run_dir)


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


def _call(ref: str, field_name: str, kwargs: dict[str, Any], seed: int | None = None) -> Any:
    """Call the user's ``module:callable`` with ``{field_name}_args`` (and ``seed=`` when given and the
    callable has that parameter, unless the args set it). Arguments that do not fit its signature are
    a config error naming the field; anything raised inside it is the user's code failing, reported
    with the user's own frames."""
    try:
        fn = import_object(ref)
    except ValueError as e:
        raise ConfigError(f"field `{field_name}`: {e}") from None
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to check (a builtin): let the call say
        signature = None
    if signature is not None:
        if seed is not None and "seed" in signature.parameters and "seed" not in kwargs:
            kwargs = {**kwargs, "seed": seed}  # the run's seed: a rerun (and a resume) sees the same data
        try:
            signature.bind(**kwargs)
        except TypeError as e:
            raise ConfigError(f"field `{field_name}_args`: {ref} does not take {kwargs}: {e}") from None
    try:
        return fn(**kwargs)
    except Exception as e:
        raise user_code_error(f"building the {field_name} with {ref}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})",
                              e) from e


def _data(cfg: TrainConfig) -> tuple[Any, Any]:
    if isinstance(cfg.data, DataSpec) or (isinstance(cfg.data, str) and ":" not in cfg.data):
        from .data.spec import build_data
        spec = cfg.data if isinstance(cfg.data, DataSpec) else {"path": cfg.data}
        return build_data(spec, seed=cfg.seed)
    out = _call(cfg.data, "data", dict(cfg.data_args), seed=cfg.seed)
    if isinstance(out, tuple) and len(out) == 2:
        return out
    return out, None


def run_config(cfg: TrainConfig, *, resume: bool = False, callbacks: list[Callback] = (), report: bool = True,
               quiet: bool = False, allow_data_change: bool = False) -> FitResult:
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():  # before building anything
        raise ConfigError(f"field `run_dir`: {run_dir} exists and is not a directory; name a directory")
    parts = build_parts(cfg)
    if not quiet:
        if cfg.bitnet is not None:
            parts.info = {**parts.info, "bitnet": f"{cfg.bitnet.weight_bits:g}-bit (skip {', '.join(cfg.bitnet.skip) or 'none'})"}
        info = " · ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in parts.info.items())
        name = cfg.recipe or cfg.model
        print(f"trainforge: {name}{' · ' + info if info else ''} · run dir {cfg.run_dir}", file=sys.stderr)
    trainer = Trainer(parts.model, cfg, task=parts.task, callbacks=list(callbacks), evaluators=parts.evaluators)
    try:
        result = trainer.fit(parts.train_data, parts.val_data, resume_from="latest" if resume else None,
                             allow_data_change=allow_data_change)
    finally:
        if report and trainer.opened:  # a refused or locked-out run leaves the run dir as it was
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
