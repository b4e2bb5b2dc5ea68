"""The learning-rate range test: a sensible suggestion, the model and run untouched, a PNG, bad flags."""

import copy

import pytest
import torch

from helpers import quiet_cfg, tiny_data, tiny_mlp
from trainforge import TrainConfig
from trainforge.cli import main
from trainforge.lr_find import lr_range_test, suggest


def test_suggests_an_lr_between_the_flat_start_and_the_divergence(tmp_path):
    x, y = tiny_data(n=256)
    model = tiny_mlp()
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, batch_size=16, optimizer={"name": "sgd", "lr": 0.1}))
    result = lr_range_test(model, cfg, (x, y), min_lr=1e-5, max_lr=100.0, steps=80)
    assert 1e-3 < result.suggestion < 10, result.suggestion
    assert "diverged" in result.stopped or "not finite" in result.stopped or len(result.lrs) == 80
    assert all(torch.equal(a, b) for a, b in zip(before.values(), model.state_dict().values()))  # untouched
    assert torch.equal(rng, torch.get_rng_state())
    assert not (tmp_path / "run").exists()  # no run directory written


def test_suggest_picks_the_steepest_descent_before_the_minimum():
    lrs = [10 ** (i / 4 - 5) for i in range(20)]
    loss = [2.0] * 6 + [1.9, 1.5, 0.9, 0.6, 0.5, 0.45, 0.44, 0.6, 1.5, 4.0, 9.0, 9.0, 9.0, 9.0]
    assert suggest(lrs, loss) == pytest.approx(lrs[7])


def test_cli_lr_find_prints_a_suggestion_and_draws_the_curve(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "digits.yaml"
    cfg.write_text("recipe: digits\nrun_dir: runs/digits\n")
    code = main(["lr-find", str(cfg), "--steps", "30", "--min-lr", "1e-5", "--max-lr", "1", "--out", "lr.png"])
    out = capsys.readouterr().out
    assert code == 0 and ("suggested lr:" in out or "no clear descent" in out)
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, message", [(["--min-lr", "1", "--max-lr", "0.1"], "need 0 < min_lr < max_lr"),
                                            (["--steps", "2"], "steps must be >= 5"),
                                            (["--max-lr", "inf"], "both finite"),
                                            (["--steps", "many"], "invalid int value")])
def test_cli_lr_find_refuses_bad_flags(tmp_path, capsys, flags, message):
    cfg = tmp_path / "digits.yaml"
    cfg.write_text("recipe: digits\n")
    assert main(["lr-find", str(cfg), *flags]) == 2
    assert message in capsys.readouterr().err
