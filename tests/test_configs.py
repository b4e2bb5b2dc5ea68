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


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_from_file_gives_what_train_runs(path):
    """One config path: the Python API and the CLI (recipe defaults merged, overrides, run dir) agree."""
    from trainforge import TrainConfig
    overrides = ["seed=3"]
    assert TrainConfig.from_file(path, overrides, run_dir="runs/x") == load_config(path, overrides, "runs/x")
    cfg = TrainConfig.from_file(path)
    if cfg.recipe:  # the recipe's defaults are there, under the file's own fields
        from trainforge.recipes import load_recipe
        defaults = load_recipe(cfg.recipe).DEFAULTS
        assert cfg.batch_size == __import__("yaml").safe_load(path.read_text()).get("batch_size", defaults.get("batch_size", 32))
