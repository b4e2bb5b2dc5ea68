"""char_lm: a character-level GPT on tiny shakespeare, nanoGPT's classic small-LM check.

The text's first 90% trains and the last 10% validates; the vocabulary is the sorted set of the
characters in the whole file (65 for tiny shakespeare). Training windows are drawn at random
offsets (``TokenWindowDataset(random_windows=...)``, a pure function of the seed), enough for
the whole step budget in one epoch; validation windows are random offsets into the held-out
tail with a fixed seed, so every evaluation scores the same windows spread over the whole split.

Defaults follow nanoGPT's ``train_shakespeare_char`` CPU setting: context 64, batch 12, 4 layers,
4 heads, width 128, no dropout, AdamW lr 1e-3 with betas (0.9, 0.99) and weight decay 0.1,
100 warmup steps then cosine to 1e-4 at step 2000, clipping at 1.0.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError
from ..data.loader import epoch_seed
from ..data.tokens import TokenWindowDataset
from .base import RecipeParts, recipe_settings, settings_checked
from .gpt import GPT, generate

DATA_NAME = Path("shared") / "data" / "tinyshakespeare.txt"

RECIPE_ARGS: dict[str, Any] = {
    "path": None,            # default: shared/data/tinyshakespeare.txt, found above the CWD or this file
    "val_fraction": 0.1,     # the last 10% of the text
    "context": 64,
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 128,
    "dropout": 0.0,
    "train_windows": None,   # random windows per epoch; default: max_steps * batch_size * grad.accumulate
    "val_windows": 2000,     # random (fixed) windows in the validation split
}

DEFAULTS: dict[str, Any] = {
    "max_epochs": None,
    "max_steps": 2000,
    "batch_size": 12,
    "task": "language_model",
    "optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.1},
    "schedule": {"name": "warmup_cosine", "warmup_steps": 100, "min_lr_ratio": 0.1, "total_steps": 2000},
    "grad": {"clip_norm": 1.0},
    "validation": {"every_steps": 250, "max_batches": 20, "every_epochs": None},
    "checkpoint": {"every_steps": 250, "every_epochs": None, "keep_last": 3, "monitor": "val/loss", "mode": "min"},
    "recipe_args": RECIPE_ARGS,
}


# -- text and vocabulary ----------------------------------------------------------------------

def find_data(path: str | Path | None = None) -> Path:
    """The text file: ``path`` when given, else ``shared/data/tinyshakespeare.txt`` found by walking
    up from the working directory and from this file's location."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"field `recipe_args.path`: {p} is not a file")
        return p
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for d in (start, *start.parents):
            if (d / DATA_NAME).is_file():
                return d / DATA_NAME
    raise ConfigError(
        f"char_lm: cannot find {DATA_NAME} above {starts[0]} or {starts[1]}; "
        "set `recipe_args.path` to a text file (e.g. --set recipe_args.path=/path/to/tinyshakespeare.txt)"
    )


@lru_cache(maxsize=4)
def _read_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def vocab(path: str | Path | None = None) -> tuple[dict[str, int], list[str]]:
    """(stoi, itos) over the sorted set of characters of the text."""
    itos = sorted(set(_read_text(str(find_data(path)))))
    return {ch: i for i, ch in enumerate(itos)}, itos


def encode(text: str, stoi: dict[str, int]) -> list[int]:
    missing = sorted(set(text) - set(stoi))
    if missing:
        raise ValueError(f"characters not in the vocabulary: {''.join(missing)!r}")
    return [stoi[ch] for ch in text]


def decode(ids: Any, itos: list[str]) -> str:
    return "".join(itos[int(i)] for i in ids)


def splits(path: str | Path | None = None, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The encoded text as uint8 ids, cut into (train, val) at ``(1 - val_fraction)`` of its length."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"field `recipe_args.val_fraction`: got {val_fraction} — must be in (0, 1)")
    p = find_data(path)
    text = _read_text(str(p))
    stoi, itos = vocab(p)
    if len(itos) > 256:
        raise ConfigError(f"char_lm: {p} has {len(itos)} distinct characters; at most 256 are supported")
    lut = np.zeros(max(map(ord, itos)) + 1, dtype=np.uint8)
    lut[[ord(ch) for ch in itos]] = np.arange(len(itos), dtype=np.uint8)
    ids = lut[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]  # one code point per char, vectorised
    n = int(len(ids) * (1 - val_fraction))
    return ids[:n], ids[n:]


# -- the recipe -------------------------------------------------------------------------------

def build(cfg: Any) -> RecipeParts:
    a = recipe_settings(cfg, RECIPE_ARGS, "char_lm")
    seed = int(getattr(cfg, "seed", 0))
    path = find_data(a["path"])
    train_ids, val_ids = splits(path, a["val_fraction"])
    _, itos = vocab(path)
    context = int(a["context"])
    n_train = a["train_windows"] or _default_train_windows(cfg)
    with torch.random.fork_rng(devices=[]), settings_checked("char_lm"):  # init: a function of the seed
        torch.manual_seed(seed)
        model = GPT(len(itos), context, n_layer=a["n_layer"], n_head=a["n_head"], n_embd=a["n_embd"],
                    dropout=a["dropout"])
    train = TokenWindowDataset(train_ids, context, random_windows=n_train, seed=epoch_seed(seed, 0, salt=201))
    val = TokenWindowDataset(val_ids, context, random_windows=int(a["val_windows"]), seed=epoch_seed(seed, 0, salt=202))
    return RecipeParts(
        model=model, train_data=train, val_data=val, task="language_model",
        info={"text": str(path), "vocab_size": len(itos), "train_chars": len(train_ids), "val_chars": len(val_ids),
              "params": model.num_params()},
    )


def _default_train_windows(cfg: Any) -> int:
    """Enough random windows that the step budget is one epoch (no window order repeats)."""
    steps = getattr(cfg, "max_steps", None) or 2000
    batch = int(getattr(cfg, "batch_size", 12))
    accumulate = int(getattr(getattr(cfg, "grad", None), "accumulate", 1) or 1)
    return int(steps) * batch * accumulate


def sample_text(model: torch.nn.Module, cfg: Any, prompt: str, max_new_tokens: int = 500, temperature: float = 0.8,
                top_k: int | None = 200, seed: int = 0) -> str:
    """The prompt followed by ``max_new_tokens`` sampled characters (an empty prompt starts at a newline)."""
    a = recipe_settings(cfg, RECIPE_ARGS, "char_lm")
    stoi, itos = vocab(a["path"])
    prompt = prompt or "\n"
    try:
        ids = encode(prompt, stoi)
    except ValueError as e:  # a ConfigError (a ValueError) so the CLI answers in one line
        raise ConfigError(f"prompt: {e}") from None
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(int(seed))
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=g)
    return decode(out[0].tolist(), itos)
