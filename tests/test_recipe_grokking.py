"""The grokking recipe: every equation exactly once, train/val disjoint, the split fixed by the seed;
the last-position shortcut computes the same function; the recipe trains through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import quiet_cfg
from trainforge import TrainConfig
from trainforge.config import ConfigError
from trainforge.recipes import grokking
from trainforge.run import resolve_config


@pytest.mark.parametrize("operation", grokking.OPERATIONS)
def test_every_equation_exactly_once_with_the_right_answer(operation):
    p = 11
    inputs, answers = grokking.equations(p, operation)
    assert inputs.shape == (p * (p - 1), 4)
    pairs = {(int(a), int(b)) for a, b in inputs[:, [0, 2]]}
    assert pairs == {(x, y) for x in range(p) for y in range(1, p)}
    assert (inputs[:, 1] == p + 1).all() and (inputs[:, 3] == p).all()
    x, y = inputs[:, 0], inputs[:, 2]
    if operation == "mul":
        assert torch.equal(answers, x * y % p)
    elif operation == "add":
        assert torch.equal(answers, (x + y) % p)
    elif operation == "sub":
        assert torch.equal(answers, (x - y) % p)
    else:
        assert torch.equal(answers * y % p, x)  # z = x / y  <=>  z * y = x


def test_split_is_disjoint_complete_and_fixed_by_the_seed():
    inputs, answers = grokking.equations(97)
    (xt, yt), (xv, yv) = grokking.split(inputs, answers, 0.5, seed=0)
    assert len(yt) == len(yv) == 97 * 96 // 2
    train = {tuple(r.tolist()) for r in xt}
    val = {tuple(r.tolist()) for r in xv}
    assert not train & val and len(train | val) == len(inputs)
    (xt2, _), _ = grokking.split(inputs, answers, 0.5, seed=0)
    (xt3, _), _ = grokking.split(inputs, answers, 0.5, seed=1)
    assert torch.equal(xt, xt2) and not torch.equal(xt, xt3)


@pytest.mark.parametrize("shared_prefix", [0, 1, 2, 3])
@pytest.mark.parametrize("n_layer", [1, 2, 3])
@pytest.mark.parametrize("score_table", [True, False])
def test_shortcuts_compute_the_full_causal_forward_and_its_gradient(shared_prefix, n_layer, score_table):
    torch.manual_seed(0)
    model = grokking.Decoder(13, dim=32, n_layer=n_layer, n_head=4, shared_prefix=shared_prefix)
    if not score_table:  # the first block's scores per equation, as for a vocabulary too large for the table
        model.max_score_table = 0
    inputs, answers = grokking.equations(11)
    tokens, answers = inputs[::3], answers[::3]  # repeated (x, op) prefixes, as in a batch
    h = model.token_embeddings(tokens) + model.position_embeddings(torch.arange(4))
    for layer in model.layers:
        h = layer(h, last_only=False)
    full = model.head(model.ln_f(h))[:, -1]
    fast = model(tokens)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    grads = [torch.autograd.grad(F.cross_entropy(out, answers), list(model.parameters())) for out in (fast, full)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # causal attention: position 0 of a block does not see the later positions
    x = torch.randn(1, 4, 32)
    y = x.clone()
    y[:, 1:] = torch.randn(1, 3, 32)
    block = model.layers[0]
    torch.testing.assert_close(block(x)[:, 0], block(y)[:, 0])
    assert not torch.allclose(block(x)[:, 3], block(y)[:, 3])


def test_bad_recipe_args_are_config_errors():
    for args, match in (({"p": 12}, "prime"), ({"operation": "pow"}, "operation"),
                        ({"train_fraction": 1.0}, "train_fraction"), ({"n_head": 5}, "divisible"),
                        ({"width": 64}, "recipe_args.width")):
        cfg = resolve_config({"recipe": "grokking", "recipe_args": args})
        with pytest.raises(ConfigError, match=match):
            grokking.build(cfg)


def test_defaults_are_the_papers_setup():
    cfg = resolve_config({"recipe": "grokking"})
    assert cfg.batch_size == 512 and cfg.optimizer.name == "adam" and cfg.optimizer.decay_all
    assert cfg.optimizer.lr == 1e-3 and tuple(cfg.optimizer.betas) == (0.9, 0.98)
    assert cfg.grokfast.filter == "ema" and cfg.grokfast.alpha == 0.98 and cfg.grokfast.lamb == 2.0
    assert cfg.milestones == {"val/accuracy": 0.95} and cfg.stop_on_milestone == "val/accuracy"
    from trainforge.optim import build_schedule
    sched = build_schedule(cfg.schedule, 20_000)
    assert [round(sched(s), 4) for s in (0, 9, 10, 5000)] == [round(1 / 11, 4), round(10 / 11, 4), 1.0, 1.0]
    ma = resolve_config({"recipe": "grokking", "grokfast": {"filter": "ma", "window": 100, "lamb": 5.0}})
    assert ma.grokfast.filter == "ma" and ma.grokfast.lamb == 5.0  # replaces the default section whole
    parts = grokking.build(cfg)
    assert parts.info["params"] == 422_784 and len(parts.train_data[1]) == 4656


def test_demo_trains_through_the_cli(tmp_path):
    from trainforge.cli import main
    run_dir = tmp_path / "grok"
    code = main(["demo", "grokking", "--run-dir", str(run_dir), "--set", "max_steps=12",
                 "--set", "recipe_args.dim=32", "--set", "recipe_args.p=11", "--set", "batch_size=16",
                 "--set", "log.progress=false", "--set", "log.sinks=[jsonl]",
                 "--set", "recipe_args.train_accuracy=true"])
    assert code == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["stopped_reason"] == "max_steps reached (12)"
    assert set(result["milestones"]) == {"val/accuracy"}
    assert {"val/accuracy", "train/accuracy", "grokfast/lamb"} <= set(result["curves"])
    assert TrainConfig.from_dict(quiet_cfg(tmp_path)).grokfast is None
