"""Recipes: complete runs (model, data, task, evaluation, defaults) selected by name."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..config import ConfigError

RECIPES = ("graph_walks", "char_lm", "digits", "grokking")


def load_recipe(name: str) -> ModuleType:
    if name not in RECIPES:
        raise ConfigError(f"field `recipe`: got {name!r} — known recipes: {', '.join(RECIPES)}")
    return importlib.import_module(f"{__name__}.{name}")
