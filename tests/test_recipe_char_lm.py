"""char_lm: vocabulary, encode/decode, the 90/10 split, windows, a short smoke run, sampling.

Most tests use a small text written to tmp_path (fast, and independent of shared/); the tests on
tiny shakespeare itself skip when shared/data/tinyshakespeare.txt is not there.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainforge.config import ConfigError, TrainConfig
from trainforge.data.loader import make_loader
from trainforge.recipes import char_lm

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def shakespeare():
    try:
        return char_lm.find_data()
    except ConfigError:
        pytest.skip("shared/data/tinyshakespeare.txt not found")


def cfg_for(path, **fields):
    data = {**char_lm.DEFAULTS, "recipe": "char_lm", "recipe_args": {"path": str(path), "val_windows": 50}}
    data.update(fields)
    return TrainConfig.from_dict(data)


def test_vocab_is_the_sorted_character_set(text_file):
    stoi, itos = char_lm.vocab(text_file)
    assert itos == sorted(set(TEXT))
    assert all(stoi[ch] == i for i, ch in enumerate(itos))


def test_encode_decode_round_trip(text_file):
    stoi, itos = char_lm.vocab(text_file)
    ids = char_lm.encode(TEXT[:300], stoi)
    assert char_lm.decode(ids, itos) == TEXT[:300]
    assert char_lm.decode(torch.tensor(ids), itos) == TEXT[:300]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        char_lm.encode("Zebra", stoi)


def test_split_boundary(text_file):
    train, val = char_lm.splits(text_file, 0.1)
    n = int(len(TEXT) * 0.9)
    assert len(train) == n and len(val) == len(TEXT) - n
    stoi, itos = char_lm.vocab(text_file)
    assert char_lm.decode(train, itos) == TEXT[:n] and char_lm.decode(val, itos) == TEXT[n:]
    with pytest.raises(ConfigError, match="val_fraction"):
        char_lm.splits(text_file, 1.0)


def test_finds_the_data_or_says_how_to(tmp_path, monkeypatch, shakespeare):
    monkeypatch.chdir(tmp_path)  # nothing above tmp_path: found from the module's own location
    assert char_lm.find_data() == shakespeare
    with pytest.raises(ConfigError, match="recipe_args.path"):
        char_lm.find_data(tmp_path / "missing.txt")
    monkeypatch.setattr(char_lm, "DATA_NAME", char_lm.Path("no") / "such.txt")
    with pytest.raises(ConfigError, match="set `recipe_args.path`"):
        char_lm.find_data()


def test_defaults_are_nanogpt_shakespeare_char():
    cfg = TrainConfig.from_dict({**char_lm.DEFAULTS, "recipe": "char_lm"})
    assert (cfg.max_steps, cfg.batch_size, cfg.optimizer.lr, cfg.optimizer.betas) == (2000, 12, 1e-3, (0.9, 0.99))
    assert cfg.optimizer.weight_decay == 0.1 and cfg.grad.clip_norm == 1.0
    s = cfg.schedule
    assert (s.name, s.warmup_steps, s.min_lr_ratio, s.total_steps) == ("warmup_cosine", 100, 0.1, 2000)
    v = cfg.validation
    assert (v.every_steps, v.max_batches, v.every_epochs) == (250, 20, None)
    a = char_lm.RECIPE_ARGS
    assert (a["context"], a["n_layer"], a["n_head"], a["n_embd"], a["dropout"]) == (64, 4, 4, 128, 0.0)


def test_build_windows(text_file):
    parts = char_lm.build(cfg_for(text_file, max_steps=30))
    assert parts.task == "language_model"
    assert len(parts.train_data) == 30 * 12  # the whole step budget in one epoch of random windows
    assert len(parts.val_data) == 50
    w = parts.train_data[0]
    assert w.shape == (65,) and w.dtype == torch.int64
    _, itos = char_lm.vocab(text_file)
    assert char_lm.decode(w, itos) in TEXT  # a contiguous piece of the text
    n = int(len(TEXT) * 0.9)
    assert all(char_lm.decode(parts.val_data[i], itos) in TEXT[n:] for i in range(50))  # val only from the tail
    assert parts.info["vocab_size"] == len(itos) == parts.model.vocab_size


def test_shakespeare_vocab_and_split(shakespeare):
    stoi, itos = char_lm.vocab(shakespeare)
    assert len(itos) == 65 and itos[0] == "\n" and itos[1] == " "
    train, val = char_lm.splits(shakespeare)
    text = shakespeare.read_text(encoding="utf-8")
    assert len(train) == int(len(text) * 0.9) and len(train) + len(val) == len(text)
    assert char_lm.decode(val[:200], itos) == text[len(train):len(train) + 200]
    assert train.dtype == np.uint8


def test_smoke_loop_loss_drops(shakespeare):
    """20 steps of the default model and optimiser on tiny shakespeare: the loss falls."""
    cfg = TrainConfig.from_dict({**char_lm.DEFAULTS, "recipe": "char_lm", "max_steps": 20})
    parts = char_lm.build(cfg)
    torch.manual_seed(0)
    model = parts.model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    losses = []
    for batch in make_loader(parts.train_data, batch_size=12, seed=0):
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert len(losses) == 20
    assert losses[0] > 3.9  # ~ln(65): the untrained model guesses uniformly
    assert np.mean(losses[-5:]) < losses[0] - 0.8


def test_sample_text(text_file):
    cfg = cfg_for(text_file)
    model = char_lm.build(cfg).model
    out = char_lm.sample_text(model, cfg, "Speak", max_new_tokens=40, seed=1)
    assert out.startswith("Speak") and len(out) == 45
    assert out == char_lm.sample_text(model, cfg, "Speak", max_new_tokens=40, seed=1)
    assert set(out) <= set(TEXT)
    assert len(char_lm.sample_text(model, cfg, "", max_new_tokens=10)) == 11  # starts from a newline
    with pytest.raises(ValueError, match="prompt"):
        char_lm.sample_text(model, cfg, "Zebra", max_new_tokens=1)


def test_unknown_setting(text_file):
    with pytest.raises(ConfigError, match="recipe_args.contex`"):
        char_lm.build(SimpleNamespace(seed=0, recipe_args={"path": str(text_file), "contex": 32}))


@pytest.mark.parametrize("extra, horizon", [([], 600), (["schedule.total_steps=900"], 900)])
def test_the_users_budget_sets_the_schedule_horizon(extra, horizon):
    """char_lm with max_steps: 600 decays to its floor at step 600 — not on the recipe's 2000-step
    horizon — unless the user set schedule.total_steps explicitly."""
    from trainforge.optim import build_schedule
    from trainforge.optim.schedules import schedule_horizon
    cfg = TrainConfig.from_dict({"recipe": "char_lm", "max_steps": 600}, overrides=extra)
    schedule = build_schedule(cfg.schedule, schedule_horizon(cfg, batches_per_epoch=None))
    assert cfg.optimizer.lr * schedule(horizon) == pytest.approx(1e-4)
    if horizon == 600:
        assert cfg.schedule.total_steps is None
