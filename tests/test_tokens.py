"""TokenWindowDataset: sequential and random windows over any 1-D token stream, read lazily."""

import numpy as np
import pytest
import torch

from trainforge.data.loader import epoch_seed, make_loader
from trainforge.data.tokens import TokenWindowDataset


def test_sequential_windows_default_stride_is_context():
    tokens = list(range(20))
    ds = TokenWindowDataset(tokens, 4)
    # offsets 0, 4, 8, 12 fit (12 + 5 = 17 <= 20); 16 would need tokens up to 20: it does not fit
    assert len(ds) == 4
    assert ds[0].tolist() == [0, 1, 2, 3, 4]
    assert ds[1].tolist() == [4, 5, 6, 7, 8]  # windows share one token: every transition is a target once
    assert ds[3].tolist() == [12, 13, 14, 15, 16]
    assert ds[-1].tolist() == ds[3].tolist()
    assert ds[0].dtype == torch.int64
    with pytest.raises(IndexError):
        ds[4]


def test_stride_and_exact_fit():
    ds = TokenWindowDataset(np.arange(11), 4, stride=2)
    assert [int(w[0]) for w in ds] == [0, 2, 4, 6]  # the last window (6..10) ends exactly at the end
    assert len(TokenWindowDataset(np.arange(5), 4)) == 1
    assert len(TokenWindowDataset(np.arange(11), 4, stride=1)) == 7


@pytest.mark.parametrize("make", [
    lambda a: a.tolist(),
    lambda a: a.astype(np.uint16),
    lambda a: torch.from_numpy(a.astype(np.int32)),
    lambda a: torch.from_numpy(a.astype(np.uint8)),
])
def test_any_array_like(make):
    base = np.arange(50) % 200
    ds = TokenWindowDataset(make(base), 7, stride=5)
    ref = TokenWindowDataset(base, 7, stride=5)
    assert len(ds) == len(ref)
    for i in range(len(ds)):
        assert ds[i].dtype == torch.int64 and torch.equal(ds[i], ref[i])


def test_memmap_is_read_lazily_not_copied(tmp_path):
    path = tmp_path / "tokens.bin"
    np.arange(10_000, dtype=np.uint16).tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    ds = TokenWindowDataset(mm, 16, random_windows=10, seed=3)
    assert ds.tokens is mm  # held by reference: nothing was read or copied at construction
    w = ds[0]
    assert w.tolist() == list(range(int(w[0]), int(w[0]) + 17))


def test_items_do_not_alias_the_stream():
    src = torch.arange(30)
    ds = TokenWindowDataset(src, 4)
    assert ds.tokens is src
    w = ds[1]
    w += 100
    assert src[4].item() == 4


def test_random_windows_are_a_function_of_seed_and_epoch():
    tokens = np.arange(1000)
    ds = TokenWindowDataset(tokens, 8, random_windows=50, seed=7)
    assert len(ds) == 50
    e0 = [ds[i].tolist() for i in range(50)]
    expected = np.random.default_rng(epoch_seed(7, 0)).integers(0, 1000 - 8, size=50)
    assert [w[0] for w in e0] == expected.tolist()
    assert all(w == list(range(w[0], w[0] + 9)) for w in e0)  # contiguous, inside the stream
    ds.set_epoch(1)
    e1 = [ds[i].tolist() for i in range(50)]
    assert e1 != e0
    ds.set_epoch(0)
    assert [ds[i].tolist() for i in range(50)] == e0  # back to epoch 0: the same windows
    other = TokenWindowDataset(tokens, 8, random_windows=50, seed=8)
    assert [other[i].tolist() for i in range(50)] != e0


def test_random_windows_reach_the_last_offset():
    ds = TokenWindowDataset(np.arange(10), 8, random_windows=500)  # valid offsets: 0 and 1
    assert sorted({int(ds[i][0]) for i in range(len(ds))}) == [0, 1]


def test_checked_at_the_door():
    with pytest.raises(ValueError, match="too short"):
        TokenWindowDataset(np.arange(4), 4)
    with pytest.raises(ValueError, match="context"):
        TokenWindowDataset(np.arange(10), 0)
    with pytest.raises(ValueError, match="stride"):
        TokenWindowDataset(np.arange(10), 2, stride=0)
    with pytest.raises(ValueError, match="random_windows"):
        TokenWindowDataset(np.arange(10), 2, random_windows=0)
    with pytest.raises(ValueError, match="1-D"):
        TokenWindowDataset(np.zeros((4, 10)), 2)


def test_with_the_resumable_loader():
    ds = TokenWindowDataset(np.arange(500, dtype=np.uint16), 10, random_windows=64, seed=1)
    batches = list(make_loader(ds, batch_size=16, seed=0))
    assert len(batches) == 4
    assert batches[0].shape == (16, 11) and batches[0].dtype == torch.int64


@pytest.mark.parametrize("kind", ["numpy", "memmap", "torch", "list"])
@pytest.mark.parametrize("random_windows", [None, 7])
def test_batched_fetch_equals_stacked_items(tmp_path, kind, random_windows):
    """__getitems__ (one gather per batch) must give exactly the stacked per-item windows."""
    import numpy as np
    import torch
    from trainforge.data.loader import collate
    from trainforge.data.tokens import TokenWindowDataset
    raw = (np.arange(300) * 7 % 251).astype(np.uint16)
    if kind == "memmap":
        raw.tofile(tmp_path / "t.bin")
        tokens = np.memmap(tmp_path / "t.bin", dtype=np.uint16, mode="r")
    else:
        tokens = {"numpy": raw, "torch": torch.from_numpy(raw.astype(np.int64)), "list": raw.tolist()}[kind]
    ds = TokenWindowDataset(tokens, 16, stride=5, random_windows=random_windows, seed=3)
    ds.set_epoch(2)
    idx = [0, 3, len(ds) - 1, 2, -1]
    got = collate(ds.__getitems__(idx))
    want = torch.stack([ds[i] for i in idx])
    assert got.dtype == torch.int64 and torch.equal(got, want)
    with pytest.raises(IndexError):
        ds.__getitems__([len(ds)])
