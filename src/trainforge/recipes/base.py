"""What a recipe hands the trainer (RecipeParts), and the shared helper that reads recipe settings.

A recipe module defines ``DEFAULTS`` (TrainConfig fields as nested dicts, ``recipe_args`` among
them) and ``build(cfg) -> RecipeParts``. The trainer merges ``DEFAULTS`` under the user's config;
``build`` reads its own settings with :func:`recipe_settings`, which also checks them at the door.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch

from ..config import ConfigError


@dataclass
class RecipeParts:
    """Everything a recipe supplies to a run; the trainer supplies the rest from the config."""

    model: torch.nn.Module
    train_data: Any  # a Dataset (preferred: the trainer wraps it in a resumable, seeded loader) or tensors
    val_data: Any | None = None
    task: str | Callable = "classification"  # "classification" | "language_model" | "regression" | callable
    # Run after each validation (model in eval mode, under no_grad); metrics are recorded per epoch.
    evaluators: list[Callable[[torch.nn.Module], dict[str, float]]] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # shown at start, e.g. {"vocab_size": 65, "params": 800_000}


def recipe_settings(cfg: Any, defaults: Mapping[str, Any], recipe: str) -> dict[str, Any]:
    """``cfg.recipe_args`` merged over ``defaults``; an unknown key is a ConfigError naming the known ones.

    A typo such as ``n_layers`` would otherwise be ignored silently and the run would use the default.
    """
    given = dict(getattr(cfg, "recipe_args", None) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'`recipe_args.{k}`' for k in unknown)} for recipe {recipe} "
            f"(known keys: {', '.join(sorted(defaults))})"
        )
    for key, value in given.items():
        problem = _out_of_range(key, defaults[key], value)
        if problem:
            raise ConfigError(f"field `recipe_args.{key}`: got {value!r} — {problem}")
    return {**defaults, **given}


LIMIT = 10**9


def _out_of_range(key: str, default: Any, value: Any) -> str | None:
    """Why a numeric recipe argument is impossible (None: it is fine). The bounds, for every recipe:
    counts and sizes are integers in [1, 1e9] (``n_*`` counts may be 0); ``dropout`` and ``*fraction``
    are in [0, 1); probabilities ``p_*`` in [0, 1]; other numbers finite in [0, 1e9]. A list of
    integers (``channels``) holds integers in [1, 1e9]. A non-numeric default is the recipe's to check."""
    if isinstance(default, list) and default and all(isinstance(d, int) for d in default):
        if not isinstance(value, list) or not all(_is_int(v) and 1 <= v <= LIMIT for v in value):
            return f"must be a list of integers in [1, {LIMIT:.0e}]"
        return None
    numeric = (isinstance(default, (int, float)) and not isinstance(default, bool)) or (
        default is None and isinstance(value, (int, float)) and not isinstance(value, bool))
    if not numeric or value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "must be a finite number"
    if "dropout" in key or "fraction" in key:
        return None if 0 <= value < 1 else "must be in [0, 1)"
    if key.startswith("p_"):
        return None if 0 <= value <= 1 else "must be in [0, 1]"
    if isinstance(default, int):
        low = 0 if key.startswith("n_") else 1
        if not _is_int(value) or not low <= value <= LIMIT:
            return f"must be an integer in [{low}, {LIMIT:.0e}]"
        return None
    return None if 0 <= value <= LIMIT else f"must be in [0, {LIMIT:.0e}]"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@contextmanager
def settings_checked(recipe: str) -> Iterator[None]:
    """Inside ``build``: a ValueError from a part (a graph that cannot hold its jumpers, heads that
    do not divide the width) becomes a ConfigError, so the CLI reports one line and exits 2."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, ZeroDivisionError) as e:
        raise ConfigError(f"recipe {recipe}: bad recipe_args: {e}") from None


def count_params(model: torch.nn.Module) -> int:
    """Trainable parameters, each shared tensor counted once (tied embeddings are one tensor)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # parameters() already yields a shared Parameter once
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
