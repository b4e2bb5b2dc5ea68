"""Every example config in configs/ loads and names only known keys (recipe defaults merged)."""

from pathlib import Path

import pytest

from trainforge.run import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.run_dir.parts[0] == "runs"
    if cfg.recipe:
        from trainforge.recipes import load_recipe
        recipe = load_recipe(cfg.recipe)
        unknown = set(cfg.recipe_args) - set(recipe.RECIPE_ARGS)
        assert not unknown, unknown


def test_every_recipe_has_a_config():
    from trainforge.recipes import RECIPES
    named = {load_config(p).recipe for p in CONFIGS}
    assert set(RECIPES) <= named
