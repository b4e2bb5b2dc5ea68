"""load_dataset: every format, its options, and one clear DataError per kind of bad input."""

import json
import pickle

import h5py
import numpy as np
import pytest
import torch

from trainforge.data import DataError, FilteredDataset, TokenWindowDataset, collate, load_dataset
from trainforge.data.readers import ArrayDataset, MappedArray


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


RECORDS = [{"x": [i, i + 1], "y": i % 3, "w": i / 2, "name": f"n{i}"} for i in range(6)]


# --- formats ------------------------------------------------------------------------------------

def test_json_records_are_dicts_of_tensors(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps(RECORDS))
    ds = load_dataset(p)
    assert len(ds) == 6
    item = ds[4]
    assert torch.equal(item["x"], torch.tensor([4, 5])) and item["y"].item() == 1
    assert item["w"].dtype == torch.float32 and item["name"] == "n4"
    batch = collate([ds[i] for i in range(3)])
    assert batch["x"].shape == (3, 2) and batch["name"] == ["n0", "n1", "n2"]


def test_jsonl_fields_dtype_and_tuple(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    (tmp_path / "d.jsonl").write_text(p.read_text() + "\n\n")  # trailing blank lines are fine
    ds = load_dataset(p, fields=["y", "x"], dtype={"x": "float32"})
    assert list(ds[0]) == ["y", "x"] and ds[0]["x"].dtype == torch.float32
    x, y = load_dataset(p, fields=["x", "y"], as_tuple=True)[2]
    assert torch.equal(x, torch.tensor([2, 3])) and y.item() == 2
    assert load_dataset(p, dtype="float64")[1]["y"].dtype == torch.float64


def test_csv_and_tsv_infer_numeric_columns(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('a,b,label\n1,2.5,"cat, black"\n3,4,dog\n')
    ds = load_dataset(p)
    assert ds[0]["a"].dtype == torch.int64 and ds[1]["b"].item() == 4.0
    assert ds[0]["label"] == "cat, black"
    t = tmp_path / "d.tsv"
    t.write_text("a\tb\n1\t2\n")
    assert load_dataset(t)[0]["b"].item() == 2


def test_npy_is_memory_mapped_and_pickles_small(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, np.arange(40, dtype=np.float64).reshape(20, 2))
    ds = load_dataset(p)
    assert isinstance(ds, ArrayDataset) and isinstance(ds.arrays["array"], MappedArray)
    assert torch.equal(ds[3], torch.tensor([6.0, 7.0])) and ds[3].dtype == torch.float32  # float64 -> float32
    assert load_dataset(p, dtype="float64")[0].dtype == torch.float64
    assert len(pickle.dumps(ds)) < 2000  # a spawned worker reopens the file, it is not sent the data


def test_npz_and_hdf5_give_dict_items(tmp_path):
    p = tmp_path / "a.npz"
    np.savez(p, x=np.zeros((5, 3), np.float32), y=np.arange(5))
    ds = load_dataset(p)
    assert set(ds[0]) == {"x", "y"} and ds[4]["y"].item() == 4
    x, y = load_dataset(p, keys=["x", "y"], as_tuple=True)[1]
    assert x.shape == (3,) and y.item() == 1
    h = tmp_path / "a.h5"
    with h5py.File(h, "w") as f:
        f["inputs"] = np.ones((4, 2), np.float32)
        f["group/targets"] = np.arange(4)
    ds = load_dataset(h, keys=["inputs", "group/targets"])
    assert ds[3]["group/targets"].item() == 3 and len(ds) == 4
    assert len(pickle.dumps(ds)) < 2000  # no open h5py handle travels to workers


def test_bin_memmap_rows_and_token_windows(tmp_path):
    p = tmp_path / "t.bin"
    np.arange(1000, dtype=np.uint16).tofile(p)
    rows = load_dataset(p, dtype="uint16", shape=(-1, 10))
    assert len(rows) == 100 and rows[2].dtype == torch.int64 and rows[2][0].item() == 20
    windows = load_dataset(p, dtype="uint16", context=16)
    assert isinstance(windows, TokenWindowDataset)
    assert torch.equal(windows[1], torch.arange(16, 33))


def test_pickle_needs_allow_pickle_and_warns(tmp_path):
    p = tmp_path / "d.pkl"
    p.write_bytes(pickle.dumps(RECORDS))
    with pytest.raises(DataError, match="allow_pickle=True"):
        load_dataset(p)
    with pytest.warns(UserWarning, match="arbitrary code"):
        ds = load_dataset(p, allow_pickle=True)
    assert ds[5]["y"].item() == 2


def test_filter_option_drops_at_build(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    ds = load_dataset(p, filter=lambda r: r["y"] != 0)
    assert isinstance(ds, FilteredDataset) and len(ds) == 4 and ds.stats() == {"data/dropped": 2}


def test_format_given_overrides_extension(tmp_path):
    p = write_jsonl(tmp_path / "d.txt", RECORDS)
    assert len(load_dataset(p, format="jsonl")) == 6


# --- bad input: one DataError, at build, naming the place ------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope.jsonl")


def test_unknown_extension_lists_formats(tmp_path):
    p = tmp_path / "d.xyz"
    p.write_text("1")
    with pytest.raises(DataError, match=r"\.xyz.*jsonl.*hdf5.*npy.*bin"):
        load_dataset(p)


def test_empty_file(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_dataset(p)


def test_malformed_json_line_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(DataError, match=r"d\.jsonl:3: invalid JSON"):
        load_dataset(p)


def test_malformed_json_file_names_line(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[\n{"a": 1},\n{"a": }\n]')
    with pytest.raises(DataError, match=r"d\.json:3"):
        load_dataset(p)


def test_record_missing_field_names_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1, "b": 2}\n{"a": 3}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: .*'b'"):
        load_dataset(p)


def test_csv_wrong_field_count_names_line(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(DataError, match=r"d\.csv:3: 3 fields, expected 2"):
        load_dataset(p)


def test_hdf5_missing_key_lists_keys(tmp_path):
    p = tmp_path / "d.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.zeros(3)
        f["y"] = np.zeros(3)
    with pytest.raises(DataError, match=r"\['z'\].*\['x', 'y'\]"):
        load_dataset(p, keys=["x", "z"])


def test_bin_size_not_multiple_of_dtype(tmp_path):
    p = tmp_path / "t.bin"
    p.write_bytes(b"\x00" * 7)
    with pytest.raises(DataError, match="not a multiple of the uint16 item size"):
        load_dataset(p, dtype="uint16")
    p.write_bytes(b"\x00" * 8)
    with pytest.raises(DataError, match=r"shape \[3\] needs 3 uint16 items, the file holds 4"):
        load_dataset(p, dtype="uint16", shape=[3])
    with pytest.raises(DataError, match="needs dtype"):
        load_dataset(p)


def test_mismatched_lengths_name_fields(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((5, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match=r"x: 5, y: 4"):
        load_dataset(p)
    h = tmp_path / "d.h5"
    with h5py.File(h, "w") as f:
        f["a"] = np.zeros(3)
        f["b"] = np.zeros(2)
    with pytest.raises(DataError, match=r"a: 3, b: 2"):
        load_dataset(h)


def test_unknown_option_and_bad_dtype(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    with pytest.raises(DataError, match="unknown option.*colums.*known: "):
        load_dataset(p, colums=["x"])
    with pytest.raises(DataError, match="unknown dtype"):
        load_dataset(p, dtype="float17")
    with pytest.raises(DataError, match=r"no field\(s\) \['z'\]"):
        load_dataset(p, fields=["z"])


def test_json_not_a_list_and_empty_list(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('{"a": 1}')
    with pytest.raises(DataError, match="list of records"):
        load_dataset(p)
    p.write_text("[]")
    with pytest.raises(DataError, match="no records"):
        load_dataset(p)


def test_npy_of_objects_is_refused(tmp_path):
    p = tmp_path / "o.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="unpickling"):
        load_dataset(p)
