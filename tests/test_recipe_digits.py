"""digits: the bundled scikit-learn digits, a deterministic split, and the default model reaching 0.97."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from trainforge.config import ConfigError, TrainConfig
from trainforge.data.loader import make_loader, prepare_epoch
from trainforge.recipes import digits


def test_split_is_deterministic_scaled_and_stratified():
    train, val = digits.load_split(0.2, seed=0)
    assert len(train) == 1437 and len(val) == 360
    x, y = train.tensors
    assert x.dtype == torch.float32 and x.shape == (1437, 64) and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1 and x.max() == 1
    again, _ = digits.load_split(0.2, seed=0)
    assert torch.equal(again.tensors[0], x)
    other, _ = digits.load_split(0.2, seed=1)
    assert not torch.equal(other.tensors[0], x)
    counts = torch.bincount(val.tensors[1])
    assert counts.min() >= 35 and counts.max() <= 37  # each class keeps its share


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_models(arch):
    parts = digits.build(SimpleNamespace(seed=0, recipe_args={"arch": arch}))
    assert parts.task == "classification" and parts.info["arch"] == arch
    assert parts.model(torch.rand(5, 64)).shape == (5, 10)


def test_settings_checked():
    with pytest.raises(ConfigError, match="recipe_args.arch"):
        digits.build(SimpleNamespace(seed=0, recipe_args={"arch": "resnet"}))
    with pytest.raises(ConfigError, match="recipe_args.width"):
        digits.build(SimpleNamespace(seed=0, recipe_args={"width": 3}))


def test_defaults_reach_097():
    cfg = TrainConfig.from_dict({**digits.DEFAULTS, "recipe": "digits"})
    parts = digits.build(cfg)
    model = parts.model
    loader = make_loader(parts.train_data, batch_size=cfg.batch_size, seed=cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    total = cfg.max_epochs * len(loader)
    warm = int(cfg.schedule.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    for epoch in range(cfg.max_epochs):
        model.train()
        prepare_epoch(loader, cfg.seed, epoch)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad.clip_norm)
            opt.step()
            sched.step()
    model.eval()
    xv, yv = parts.val_data.tensors
    with torch.no_grad():
        acc = (model(xv).argmax(1) == yv).float().mean().item()
    assert acc >= 0.97
