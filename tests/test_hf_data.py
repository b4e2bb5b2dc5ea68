"""Hugging Face datasets and input_ids / attention_mask / labels batches (in memory, never a download)."""

import importlib.util
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import quiet_cfg
from trainforge import TrainConfig, Trainer
from trainforge.tasks import make_task

needs_datasets = pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets not installed")
VOCAB, T = 12, 8


class TinyHFLM(nn.Module):
    """Takes input_ids and attention_mask and returns an output with .logits, as transformers models do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Embedding(VOCAB, 16), nn.Linear(16, VOCAB)
        self.masks_seen = 0

    def forward(self, input_ids, attention_mask=None):
        self.masks_seen += attention_mask is not None
        return SimpleNamespace(logits=self.head(torch.tanh(self.embed(input_ids))))


def counting_rows(n=96):
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    ids = (start + torch.arange(T)) % VOCAB  # each next token is the previous + 1: learnable
    return ids


def test_language_model_dict_batches_shift_the_labels_and_ignore_minus_100():
    model, ids = TinyHFLM(), counting_rows(4)
    labels = ids.clone()
    labels[:, -2:] = -100  # padding, ignored
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    loss = make_task("language_model").train_step(model, batch).loss
    logits = model(ids).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(loss, expected) and model.masks_seen == 1


@needs_datasets
def test_an_in_memory_hf_dataset_trains_a_language_model(tmp_path):
    import datasets
    ids = counting_rows()
    table = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(len(ids))], "input_ids": ids.tolist(),
                                        "attention_mask": torch.ones_like(ids).tolist(), "labels": ids.tolist()})
    train, val = table.select(range(80)), table.select(range(80, 96))
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=20, batch_size=16, task="language_model",
                                          optimizer={"lr": 0.05}))
    model = TinyHFLM()
    result = Trainer(model, cfg).fit(train, val)
    assert result.history["val/loss"][-1] < 0.5 * result.history["val/loss"][0]
    assert model.masks_seen > 0  # the attention mask reached the model


@needs_datasets
def test_an_hf_dataset_with_label_trains_a_classifier(tmp_path):
    import datasets
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=g)
    table = datasets.Dataset.from_dict({"input_ids": x.tolist(), "label": (x[:, 0] > 0).long().tolist(),
                                        "note": ["a"] * 120})
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=10, batch_size=20, optimizer={"lr": 0.05}))
    result = Trainer(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)), cfg).fit(table, table)
    assert result.history["val/accuracy"][-1] > 0.9


@needs_datasets
def test_an_hf_dataset_of_text_only_is_refused_with_the_fix(tmp_path):
    import datasets
    from trainforge.data.errors import DataError
    table = datasets.Dataset.from_dict({"text": ["a", "b"]})
    with pytest.raises(DataError, match="no numeric column.*tokenize the text first"):
        Trainer(nn.Linear(2, 2), TrainConfig.from_dict(quiet_cfg(tmp_path))).fit(table)
