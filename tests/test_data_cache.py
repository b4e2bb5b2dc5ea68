"""CachedDataset (LRU + stats), FilteredDataset, and build_data (data specs)."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from trainforge.config import DataSpec, TrainConfig
from trainforge.data import (CachedDataset, DataError, FilteredDataset, JsonlStream, build_data, make_loader,
                             prepare_epoch)


class Counting(Dataset):
    def __init__(self, n=10):
        self.n, self.loads = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.loads += 1
        return torch.tensor([i])


# --- CachedDataset ----------------------------------------------------------------------------------

def test_lru_hits_misses_evictions():
    base = Counting()
    ds = CachedDataset(base, capacity=2)
    for i in [0, 1, 0, 2, 1, 0]:  # 0,1 miss; 0 hit; 2 miss evicts 1; 1 miss evicts 0; 0 miss evicts 2
        assert ds[i].item() == i
    assert ds.stats() == {"cache/hits": 1, "cache/misses": 5, "cache/evictions": 3, "cache/hit_rate": 1 / 6}
    assert base.loads == 5 and len(ds) == 10
    ds.reset_stats()
    assert ds.stats()["cache/hit_rate"] == 0.0


def test_cache_recency_keeps_the_recently_used():
    ds = CachedDataset(Counting(), capacity=2)
    ds[0], ds[1], ds[0], ds[2]  # 1 is the least recently used when 2 arrives
    hits = ds.stats()["cache/hits"]
    ds[0]
    assert ds.stats()["cache/hits"] == hits + 1


def test_cache_counts_from_worker_processes_reach_the_main_process():
    ds = CachedDataset(Counting(8), capacity=100)
    loader = make_loader(ds, batch_size=2, num_workers=2, shuffle=False, pin_memory=False)
    prepare_epoch(loader, 0, 0)
    assert len(list(loader)) == 4
    assert ds.stats()["cache/misses"] == 8


def test_cache_bad_capacity():
    with pytest.raises(DataError, match="capacity"):
        CachedDataset(Counting(), 0)


# --- FilteredDataset ----------------------------------------------------------------------------------

def test_filter_chooses_once_and_counts_drops():
    base = Counting(10)
    ds = FilteredDataset(base, lambda x: x.item() % 4 != 0)
    assert len(ds) == 7 and ds.dropped == 3 and ds.stats() == {"data/dropped": 3}
    assert [ds[i].item() for i in range(len(ds))] == [1, 2, 3, 5, 6, 7, 9]
    with pytest.raises(DataError, match="dropped all 10"):
        FilteredDataset(base, lambda x: False)
    with pytest.raises(DataError, match="callable"):
        FilteredDataset(base, "nope")


# --- build_data ------------------------------------------------------------------------------------

def keep_even(record):
    return record["y"] % 2 == 0


@pytest.fixture
def jsonl(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"x": [i, -i], "y": i}) + "\n" for i in range(20)))
    return p


def test_build_data_val_fraction_split_is_seeded(jsonl):
    train, val = build_data({"path": str(jsonl), "val_fraction": 0.25, "fields": ["x", "y"]}, seed=1)
    assert len(train) == 15 and len(val) == 5
    again = build_data({"path": str(jsonl), "val_fraction": 0.25}, seed=1)[1]
    assert val.indices == again.indices


def test_build_data_from_config_model_with_val_path_cache_and_filter(jsonl, tmp_path):
    val_file = tmp_path / "val.jsonl"
    val_file.write_text(jsonl.read_text())
    cfg = TrainConfig(data={"path": str(jsonl), "val_path": str(val_file), "cache": 8,
                            "filter": "test_data_cache:keep_even", "as_tuple": True, "fields": ["x", "y"]})
    assert isinstance(cfg.data, DataSpec)
    train, val = build_data(cfg.data, seed=0)
    assert isinstance(train, CachedDataset) and len(train) == 10 and len(val) == 10
    x, y = train[1]
    assert y.item() == 2 and x.tolist() == [2, -2]
    assert build_data({"path": str(jsonl)})[1] is None


def test_build_data_streaming(jsonl):
    train, val = build_data({"path": str(jsonl), "streaming": True, "val_path": str(jsonl)}, seed=3)
    assert isinstance(train, JsonlStream) and train.seed == 3 and len(list(val)) == 20


def test_build_data_bad_specs(jsonl, tmp_path):
    with pytest.raises(DataError, match="needs path"):
        build_data({"format": "jsonl"})
    with pytest.raises(DataError, match="not both"):
        build_data({"path": str(jsonl), "val_path": str(jsonl), "val_fraction": 0.1})
    with pytest.raises(DataError, match="cannot be split"):
        build_data({"path": str(jsonl), "streaming": True, "val_fraction": 0.1})
    with pytest.raises(DataError, match="cannot import filter"):
        build_data({"path": str(jsonl), "filter": "nowhere:nothing"})
    with pytest.raises(DataError, match="does not exist"):
        build_data({"path": str(tmp_path / "missing.csv")})
    np.arange(10, dtype=np.uint16).tofile(tmp_path / "t.bin")
    with pytest.raises(DataError, match="unknown option"):
        build_data({"path": str(tmp_path / "t.bin"), "dtype": "uint16", "feilds": ["a"]})
