"""collate, ResumableSampler, make_loader + prepare_epoch determinism and resume, split."""

from collections import namedtuple

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from trainforge.data import (ResumableSampler, TokenWindowDataset, collate, make_loader, prepare_epoch, split,
                             stream_dataset)


# --- collate -------------------------------------------------------------------------------------

def test_collate_tensors_numbers_numpy():
    assert collate([torch.ones(2), torch.zeros(2)]).shape == (2, 2)
    assert collate([1, 2]).dtype == torch.long
    assert collate([1.5, 2.0]).dtype == torch.float32
    assert collate([True, False]).dtype == torch.bool
    assert torch.equal(collate([np.arange(3), np.arange(3)]), torch.tensor([[0, 1, 2]] * 2))
    assert collate([np.float32(1), np.float32(2)]).dtype == torch.float32
    assert collate(["a", "b"]) == ["a", "b"]


def test_collate_nested_dicts_and_tuples():
    Pair = namedtuple("Pair", "x y")
    batch = collate([{"x": torch.ones(3), "meta": (1, "a")}, {"x": torch.zeros(3), "meta": (2, "b")}])
    assert batch["x"].shape == (2, 3)
    assert torch.equal(batch["meta"][0], torch.tensor([1, 2])) and batch["meta"][1] == ["a", "b"]
    p = collate([Pair(torch.ones(1), 0), Pair(torch.ones(1), 1)])
    assert isinstance(p, Pair) and p.y.tolist() == [0, 1]


def test_collate_says_what_does_not_fit():
    with pytest.raises(ValueError, match=r"different shapes \[\(2,\), \(3,\)\]"):
        collate([torch.ones(2), torch.ones(3)])
    with pytest.raises(ValueError, match="has keys"):
        collate([{"a": 1}, {"b": 1}])
    with pytest.raises(ValueError, match="different lengths"):
        collate([(1, 2), (1,)])
    with pytest.raises(TypeError, match="cannot batch"):
        collate([object()])


# --- ResumableSampler ----------------------------------------------------------------------------

def test_sampler_order_is_a_pure_function_of_seed_and_epoch():
    a = ResumableSampler(50, batch_size=8, seed=3)
    b = ResumableSampler(50, batch_size=8, seed=3)
    torch.manual_seed(123)  # the global RNG must not matter
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(3)
    assert list(a) != list(b)
    d = ResumableSampler(50, batch_size=8, seed=4)
    d.set_epoch(2)
    assert list(d) != list(a)
    c = ResumableSampler(50, batch_size=8, seed=3)
    c.set_epoch(3)
    c.set_epoch(2)  # the order depends on nothing that happened before
    assert list(c) == list(a)


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_skip_yields_exactly_the_tail(drop_last):
    s = ResumableSampler(50, batch_size=8, seed=1, drop_last=drop_last)
    s.set_epoch(4)
    full = list(s)
    for k in range(s.batches_per_epoch() + 1):
        s.set_epoch(4, skip_batches=k)
        assert list(s) == full[k * 8:] and len(s) == len(full[k * 8:])


# --- make_loader + prepare_epoch ------------------------------------------------------------------

class NoisyDataset(Dataset):
    """Items that draw from numpy's and torch's global RNGs (like random augmentation does)."""

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return {"i": i, "noise": float(np.random.rand()), "t": torch.rand(2)}


def epoch_batches(dataset, workers, epoch=1, skip=0, seed=7):
    loader = make_loader(dataset, batch_size=6, num_workers=workers, seed=seed, pin_memory=False)
    assert prepare_epoch(loader, seed, epoch, skip_batches=skip)
    return [(b["i"].tolist(), b["noise"].tolist(), b["t"].tolist()) for b in loader]


def test_loader_with_two_workers_is_deterministic_and_resumes_at_the_tail():
    torch.manual_seed(0)
    first = epoch_batches(NoisyDataset(), 2)
    torch.manual_seed(99)  # a restored (different) global RNG state must not change anything
    np.random.seed(5)
    assert epoch_batches(NoisyDataset(), 2) == first
    assert sorted(sum((b[0] for b in first), [])) == list(range(40))
    assert epoch_batches(NoisyDataset(), 2, skip=3)[0][0] == first[3][0]  # the same indices
    assert epoch_batches(NoisyDataset(), 2, epoch=2)[0][0] != first[0][0]


def test_loader_resume_equals_tail_single_process():
    full = epoch_batches(NoisyDataset(), 0)
    assert [b[0] for b in epoch_batches(NoisyDataset(), 0, skip=4)] == [b[0] for b in full[4:]]


def test_prepare_epoch_moves_random_windows_to_the_epoch():
    ds = TokenWindowDataset(np.arange(500), 8, random_windows=12, seed=1)
    loader = make_loader(ds, batch_size=4, shuffle=False, seed=0, pin_memory=False)
    prepare_epoch(loader, 0, epoch=0)
    e0 = torch.cat(list(loader))
    prepare_epoch(loader, 0, epoch=1)
    assert not torch.equal(torch.cat(list(loader)), e0)
    prepare_epoch(loader, 0, epoch=0)
    assert torch.equal(torch.cat(list(loader)), e0)


def test_make_loader_defaults_and_iterable(tmp_path):
    loader = make_loader(torch.arange(10), batch_size=4)
    assert loader.pin_memory == torch.cuda.is_available()
    assert len(loader) == 3
    p = tmp_path / "t.bin"
    np.arange(200, dtype=np.uint16).tofile(p)
    ds = stream_dataset(p, "bin", dtype="uint16", context=9)  # 22 windows
    assert len(make_loader(ds, batch_size=4, drop_last=True)) == 5
    assert ds.batch_size == 4  # the stream knows how to deal batches and skip them
    assert [len(b) for b in make_loader(ds, batch_size=4, drop_last=False)][-1] == 2


# --- split ----------------------------------------------------------------------------------------

def test_split_is_deterministic_and_disjoint():
    data = torch.arange(100)
    tr, va = split(data, 0.2, seed=3)
    tr2, va2 = split(data, 0.2, seed=3)
    assert tr.indices == tr2.indices and va.indices == va2.indices
    assert len(va) == 20 and not set(tr.indices) & set(va.indices)
    assert split(data, 0.2, seed=4)[1].indices != va.indices
    with pytest.raises(ValueError, match="val_fraction"):
        split(data, 1.0)


def test_split_refuses_a_stream(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n')
    with pytest.raises(ValueError, match="map-style"):
        split(stream_dataset(p), 0.5)


def test_tensor_fast_path_gives_the_dataloader_batches():
    """In-memory tensors without workers skip the DataLoader; the batches must be the same ones."""
    from trainforge.data.loader import TensorLoader
    x, y = torch.randn(50, 3), torch.arange(50)
    fast = make_loader((x, y), batch_size=8, seed=4, pin_memory=False)
    slow = make_loader((x, y), batch_size=8, seed=4, num_workers=1, pin_memory=False)
    assert isinstance(fast, TensorLoader) and not isinstance(slow, TensorLoader)
    for epoch, skip in [(0, 0), (3, 2), (1, 6)]:
        prepare_epoch(fast, 4, epoch, skip)
        prepare_epoch(slow, 4, epoch, skip)
        a, b = list(fast), list(slow)
        assert len(a) == len(b) == len(fast) == len(slow)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
