"""The model summary printed at start and saved in the run directory."""

import torch
from torch import nn

from helpers import quiet_cfg, tiny_data
from trainforge import TrainConfig, Trainer
from trainforge.summary import format_summary, summarize


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.embed = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: counted once
        self.body.requires_grad_(False)


def test_counts_per_top_level_module_trainable_frozen_and_bytes():
    rows = {r.name: r for r in summarize(Tied())}
    assert (rows["(own)"].trainable, rows["embed"].trainable) == (3, 40)
    assert (rows["body"].trainable, rows["body"].frozen, rows["body"].bytes) == (0, 20, 80)
    assert rows["head"].trainable == 0 and "shares weights" in rows["head"].kind
    text = format_summary(Tied())
    assert text.splitlines()[-1].split()[:3] == ["total", "43", "20"]


def test_a_run_saves_it_and_prints_it_with_the_console_sink(tmp_path, capsys):
    x, y = tiny_data(n=16, d=4, classes=10)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10))
    Trainer(model, TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=1, batch_size=8))).fit((x, y))
    saved = (tmp_path / "run" / "model_summary.txt").read_text()
    assert "Linear" in saved and "total" in saved and saved.splitlines()[-1].split()[:2] == ["total", "130"]
    assert "total" not in capsys.readouterr().err  # quiet: jsonl only
    cfg = quiet_cfg(tmp_path, max_epochs=1, batch_size=8, log={"sinks": ["console"], "progress": False})
    Trainer(model, TrainConfig.from_dict({**cfg, "run_dir": str(tmp_path / "loud")})).fit((x, y))
    assert "trainable" in capsys.readouterr().err


def test_the_package_is_typed():
    """PEP 561: type checkers read trainforge's annotations (py.typed ships with the package)."""
    from pathlib import Path
    import trainforge
    assert (Path(trainforge.__file__).parent / "py.typed").is_file()
