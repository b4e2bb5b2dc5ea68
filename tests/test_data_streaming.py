"""stream_dataset: lazy reading, dealing to ranks and workers without gaps or duplicates,
per-epoch determinism, resume without parsing, the filter, and bad input."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import trainforge.data.cache as cache_mod
import trainforge.data.streaming as streaming
from trainforge.data import DataError, make_loader, prepare_epoch, stream_dataset


def jsonl_shards(tmp_path, sizes=(7, 5, 9)):
    """Shards whose records are {"i": global index, "v": [i, i]}; a blank line in each for good measure."""
    paths, g = [], 0
    for k, n in enumerate(sizes):
        lines = []
        for _ in range(n):
            lines.append(json.dumps({"i": g, "v": [g, g]}))
            g += 1
        lines.insert(1, "")
        p = tmp_path / f"shard{k}.jsonl"
        p.write_text("\n".join(lines) + "\n")
        paths.append(p)
    return paths, g


def bin_shards(tmp_path, sizes=(100, 45, 70)):
    """uint16 shards with distinct tokens: a window's first token says where it came from."""
    paths, base = [], 0
    for k, n in enumerate(sizes):
        p = tmp_path / f"tok{k}.bin"
        np.arange(base, base + n, dtype=np.uint16).tofile(p)
        paths.append(p)
        base += 1000
    return paths


def ids(items):
    return [int(x["i"]) if isinstance(x, dict) else int(x[0]) for x in items]


def worker_streams(ds, workers, monkeypatch):
    """Each simulated DataLoader worker's item list (get_worker_info faked, no processes)."""
    out = []
    for w in range(workers):
        info = SimpleNamespace(id=w, num_workers=workers)
        monkeypatch.setattr(streaming, "get_worker_info", lambda info=info: info)
        monkeypatch.setattr(cache_mod, "get_worker_info", lambda info=info: info)
        out.append(list(ds))
    monkeypatch.setattr(streaming, "get_worker_info", lambda: None)
    monkeypatch.setattr(cache_mod, "get_worker_info", lambda: None)
    return out


def loader_order(streams, batch_size):
    """What a DataLoader makes of its workers' streams: batches of each, taken round-robin."""
    chunks = [[s[i:i + batch_size] for i in range(0, len(s), batch_size)] for s in streams]
    out, k = [], 0
    while any(k < len(c) for c in chunks):
        for c in chunks:
            if k < len(c):
                out.append(c[k])
        k += 1
    return out


# --- reading -------------------------------------------------------------------------------------

def test_jsonl_stream_reads_all_shards_in_order(tmp_path):
    paths, total = jsonl_shards(tmp_path)
    ds = stream_dataset(str(tmp_path / "shard*.jsonl"), fields=["i", "v"])
    items = list(ds)
    assert ids(items) == list(range(total)) and len(ds) == total
    assert torch.equal(items[3]["v"], torch.tensor([3, 3])) and items[3]["i"] == 3


def test_bin_stream_windows_stay_inside_shards(tmp_path):
    paths = bin_shards(tmp_path)
    ds = stream_dataset(paths, "bin", dtype="uint16", context=16)
    items = list(ds)
    # (n - context - 1) // stride + 1 windows per shard: 6, 2, 4
    assert len(items) == len(ds) == 12
    assert all(x.dtype == torch.int64 and len(x) == 17 for x in items)
    assert all(int(x[-1]) - int(x[0]) == 16 for x in items)  # never crosses a shard boundary
    assert ids(items)[:7] == [0, 16, 32, 48, 64, 80, 1000]


# --- dealing to ranks and workers --------------------------------------------------------------------

@pytest.mark.parametrize("world,workers,batch", [(1, 2, 4), (2, 3, 2), (3, 2, None), (2, 1, 3)])
def test_ranks_and_workers_cover_every_record_once(tmp_path, monkeypatch, world, workers, batch):
    paths, total = jsonl_shards(tmp_path)
    seen = []
    for rank in range(world):
        ds = stream_dataset(paths, rank=rank, world_size=world, batch_size=batch)
        for s in worker_streams(ds, workers, monkeypatch):
            seen += ids(s)
    assert sorted(seen) == list(range(total))


@pytest.mark.parametrize("fmt", ["jsonl", "bin"])
def test_batches_arrive_in_the_same_order_for_any_worker_count(tmp_path, monkeypatch, fmt):
    if fmt == "jsonl":
        paths, _ = jsonl_shards(tmp_path)
        make = lambda: stream_dataset(paths, rank=1, world_size=2, batch_size=3)
    else:
        paths = bin_shards(tmp_path)
        make = lambda: stream_dataset(paths, "bin", dtype="uint16", context=8, rank=1, world_size=2, batch_size=3)
    single = [ids(b) for b in loader_order(worker_streams(make(), 1, monkeypatch), 3)]
    for workers in (2, 3):
        assert [ids(b) for b in loader_order(worker_streams(make(), workers, monkeypatch), 3)] == single


def test_rank_defaults_come_from_the_environment(tmp_path, monkeypatch):
    paths, total = jsonl_shards(tmp_path)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    ds = stream_dataset(paths)
    assert (ds.rank, ds.world_size) == (1, 3)
    assert ids(ds) == list(range(1, total, 3))
    with pytest.raises(DataError, match="rank 3 is not in"):
        stream_dataset(paths, rank=3, world_size=3)


# --- epochs ---------------------------------------------------------------------------------------

def test_shuffled_shard_order_is_a_function_of_seed_and_epoch(tmp_path):
    paths, _ = jsonl_shards(tmp_path, sizes=(2,) * 8)

    def epoch_ids(epoch, seed=0):
        ds = stream_dataset(paths, shuffle=True, seed=seed)
        ds.set_epoch(epoch)
        return ids(ds)

    assert epoch_ids(1) == epoch_ids(1)
    assert epoch_ids(1) != epoch_ids(2) and epoch_ids(1, seed=5) != epoch_ids(1)
    assert sorted(epoch_ids(3)) == list(range(16))
    for k in range(0, 16, 2):  # whole shards, each in its own order
        assert epoch_ids(3)[k + 1] == epoch_ids(3)[k] + 1


# --- resume ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("fmt", ["jsonl", "bin"])
def test_skip_batches_gives_exactly_the_tail(tmp_path, monkeypatch, fmt, workers):
    if fmt == "jsonl":
        paths, _ = jsonl_shards(tmp_path)
        make = lambda: stream_dataset(paths, batch_size=2, shuffle=True, seed=3)
    else:
        paths = bin_shards(tmp_path)
        make = lambda: stream_dataset(paths, "bin", dtype="uint16", context=4, batch_size=2, shuffle=True, seed=3)
    full = [ids(b) for b in loader_order(worker_streams(make(), workers, monkeypatch), 2)]
    for k in (1, 4, 5, len(full)):
        ds = make()
        ds.set_epoch(0)
        ds.skip_batches(k)
        assert [ids(b) for b in loader_order(worker_streams(ds, workers, monkeypatch), 2)] == full[k:]
        if fmt == "bin":
            assert len(ds) == sum(len(b) for b in full[k:])


def test_skipped_lines_are_not_parsed(tmp_path, monkeypatch):
    paths, total = jsonl_shards(tmp_path)
    ds = stream_dataset(paths, batch_size=4)
    calls = []
    real = streaming._decode
    monkeypatch.setattr(streaming, "_decode", lambda text: calls.append(text) or real(text))
    ds.skip_batches(3)
    items = list(ds)
    assert ids(items) == list(range(12, total)) and len(calls) == len(items)


@pytest.mark.parametrize("workers", [1, 2])
def test_filter_counts_drops_and_resumes_exactly(tmp_path, monkeypatch, workers):
    paths, total = jsonl_shards(tmp_path)
    make = lambda: stream_dataset(paths, batch_size=2, filter=lambda r: r["i"] % 3 != 0)
    ds = make()
    full = [ids(b) for b in loader_order(worker_streams(ds, workers, monkeypatch), 2)]
    assert sorted(sum(full, [])) == [i for i in range(total) if i % 3]
    assert ds.stats() == {"data/dropped": len(range(0, total, 3))}
    with pytest.raises(TypeError):
        len(ds)
    ds = make()
    ds.skip_batches(3)
    assert [ids(b) for b in loader_order(worker_streams(ds, workers, monkeypatch), 2)] == full[3:]


def test_state_dict_resumes_a_single_process_loader(tmp_path):
    paths, total = jsonl_shards(tmp_path)
    ds = stream_dataset(paths, fields=["i"])
    loader = make_loader(ds, batch_size=4, num_workers=0, seed=0)
    it = iter(loader)
    seen = [next(it)["i"].tolist() for _ in range(2)]
    state = ds.state_dict()
    assert state["position"] == 8
    fresh = stream_dataset(paths, fields=["i"])
    fresh.load_state_dict(state)
    rest = [b["i"].tolist() for b in make_loader(fresh, batch_size=4, num_workers=0)]
    assert sum(seen + rest, []) == list(range(total))


def real_batches(make, workers, skip=0):
    ds = make()
    loader = make_loader(ds, batch_size=3, num_workers=workers, seed=0)
    assert prepare_epoch(loader, seed=0, epoch=0, skip_batches=skip)
    return [b["i"].tolist() for b in loader], ds


def test_real_workers_match_single_process_and_resume(tmp_path):
    paths, total = jsonl_shards(tmp_path)
    make = lambda: stream_dataset(paths, fields=["i"], shuffle=True)
    single, _ = real_batches(make, 0)
    two, _ = real_batches(make, 2)
    assert sorted(sum(single, [])) == list(range(total)) and two == single
    assert real_batches(make, 2, skip=3)[0] == single[3:]


def test_real_workers_count_drops_and_resume_with_a_filter(tmp_path):
    # with a filter, batches depend on the number of workers (each fills its own), but stay
    # deterministic for a given number, and a resume continues them exactly
    paths, total = jsonl_shards(tmp_path)
    make = lambda: stream_dataset(paths, fields=["i"], filter=lambda r: r["i"] % 5 != 4)
    full, ds = real_batches(make, 2)
    assert sorted(sum(full, [])) == [i for i in range(total) if i % 5 != 4]
    assert ds.stats() == {"data/dropped": len(range(4, total, 5))}  # counted in workers, seen here
    assert real_batches(make, 2, skip=3)[0] == full[3:]


# --- bad input ------------------------------------------------------------------------------------

def test_bad_paths_and_formats(tmp_path):
    with pytest.raises(DataError, match="no files match"):
        stream_dataset(str(tmp_path / "*.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        stream_dataset(tmp_path / "x.jsonl")
    with pytest.raises(DataError, match="cannot be streamed"):
        stream_dataset(tmp_path / "x.csv", "csv")
    with pytest.raises(DataError, match="unknown option.*contxt.*known: "):
        stream_dataset(tmp_path / "x.bin", "bin", contxt=4)
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        stream_dataset(tmp_path / "e.jsonl")


def test_malformed_lines_name_file_and_line(tmp_path):
    bad_first = tmp_path / "a.jsonl"
    bad_first.write_text("\n{oops\n")
    with pytest.raises(DataError, match=r"a\.jsonl:2: invalid JSON"):
        stream_dataset(bad_first)  # at build: every shard's first record is checked
    bad_later = tmp_path / "b.jsonl"
    bad_later.write_text('{"i": 0}\n{"i": 1}\n{"i": \n')
    ds = stream_dataset(bad_later)
    with pytest.raises(DataError, match=r"b\.jsonl:3: invalid JSON"):
        list(ds)  # a file larger than memory cannot be checked whole up front


def test_bad_bin_shards(tmp_path):
    p = tmp_path / "t.bin"
    p.write_bytes(b"\x00" * 9)
    with pytest.raises(DataError, match="not a multiple"):
        stream_dataset(p, "bin", dtype="uint16", context=2)
    p.write_bytes(b"\x00" * 8)
    with pytest.raises(DataError, match="whole window"):
        stream_dataset(p, "bin", dtype="uint16", context=8)
    with pytest.raises(DataError, match="needs dtype"):
        stream_dataset(p, "bin", context=2)


def test_batch_size_must_be_known_and_agree(tmp_path):
    paths, _ = jsonl_shards(tmp_path)
    with pytest.raises(DataError, match="needs the batch size"):
        stream_dataset(paths).skip_batches(2)
    with pytest.raises(DataError, match="batch_size=4 but the loader uses batch_size=8"):
        make_loader(stream_dataset(paths, batch_size=4), batch_size=8)
