"""Readers: one call, ``load_dataset(path)``, turns a data file into a map-style dataset.

Every check happens when the dataset is built: a missing file, an unknown extension, a
malformed line, a short CSV row, a missing HDF5 key, a binary file of the wrong size or arrays of
different lengths each raise one ``DataError`` naming the file (and line, key or field) — never a
traceback from inside the training loop.

Items:
- records (json, jsonl, csv, pickled lists of dicts): a dict ``{field: value}``; numeric fields
  are stored as one tensor per column, so an item's value is a 0-d (or, for lists, 1-d) tensor;
  strings stay strings. ``collate`` stacks dicts field by field.
- arrays (npy, bin): the row as a tensor; (npz, hdf5): a dict ``{key: row tensor}``.
- ``as_tuple=True`` gives tuples in field/key order instead of dicts (``(x, y)`` for a task).
Large arrays are never read whole: ``.npy`` and ``.bin`` are memory-mapped, HDF5 is read row by row.

This module dispatches on the format; the readers live by family in ``text_formats`` (json, jsonl,
csv) and ``array_formats`` (npy, npz, bin, hdf5, pickle).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from .array_formats import (ArrayDataset, H5Array, ListDataset, MappedArray, read_bin, read_hdf5, read_npy, read_npz,
                            read_pickle)
from .cache import FilteredDataset
from .dtypes import field_dtypes, to_tensor, torch_dtype
from .errors import DataError
from .text_formats import RecordDataset, parse_json_line, read_csv, read_json, read_jsonl, records_to_dataset

# Re-exported: each format family lives in its own module (text_formats, array_formats); these
# names were importable from here before the split.
__all__ = [
    "ArrayDataset", "DataError", "EXTENSIONS", "FORMATS", "H5Array", "ListDataset", "MappedArray", "READERS",
    "RecordDataset", "check_file", "field_dtypes", "load_dataset", "parse_json_line", "records_to_dataset",
    "resolve_format", "supported_formats", "to_tensor", "torch_dtype",
]

# extension -> format; the order here is the order the error message lists them in
EXTENSIONS = {
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".npy": "npy", ".npz": "npz", ".bin": "bin",
    ".pkl": "pickle", ".pickle": "pickle",
}
FORMATS = ("json", "jsonl", "csv", "hdf5", "npy", "npz", "bin", "pickle")

# options every format takes, then each format's own
COMMON_OPTIONS = {"as_tuple", "filter"}
FORMAT_OPTIONS = {
    "json": {"fields", "dtype"},
    "jsonl": {"fields", "dtype"},
    "csv": {"fields", "dtype", "delimiter"},
    "hdf5": {"keys", "fields", "dtype"},
    "npy": {"dtype", "context", "stride", "random_windows", "seed"},
    "npz": {"keys", "fields", "dtype"},
    "bin": {"dtype", "shape", "context", "stride", "random_windows", "seed"},
    "pickle": {"allow_pickle", "fields", "dtype"},
}


def supported_formats() -> str:
    exts = ", ".join(EXTENSIONS)
    return f"formats {', '.join(FORMATS)} (extensions {exts})"


def load_dataset(path: str | os.PathLike, format: str | None = None, **options: Any) -> Dataset:
    """A map-style dataset from ``path``; ``format`` is inferred from the extension when not given.

    Options (all optional unless said): ``fields=[...]`` select and order record fields (or npz /
    HDF5 keys); ``keys=[...]`` the arrays of an npz / HDF5 file; ``dtype`` a conversion (a dtype or
    ``{field: dtype}``), except for ``.bin`` where it is the on-disk dtype and required;
    ``shape`` (``.bin``, ``-1`` allowed once); ``context`` (``.bin`` / 1-D ``.npy``: windows of
    ``context + 1`` tokens via TokenWindowDataset, with ``stride``, ``random_windows``, ``seed``);
    ``delimiter`` (csv); ``as_tuple``; ``filter`` (a predicate on items: FilteredDataset);
    ``allow_pickle=True`` (pickle only: it can run code).
    """
    p = check_file(path)
    fmt = resolve_format(p, format)
    check_options(fmt, options)
    as_tuple = bool(options.pop("as_tuple", False))
    predicate = options.pop("filter", None)
    dataset = READERS[fmt](p, **options)
    if as_tuple and not isinstance(dataset, (RecordDataset, ArrayDataset)):
        raise DataError(f"{p}: as_tuple applies to records and arrays, not to {type(dataset).__name__}")
    result = dataset
    if predicate is not None:  # the filter sees named fields, so it runs before as_tuple is set
        result = FilteredDataset(dataset, predicate)
    if as_tuple:
        dataset.as_tuple = True
    return result


def check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file {p} does not exist")
    if not p.is_file():
        raise DataError(f"data path {p} is not a file")
    if p.stat().st_size == 0:
        raise DataError(f"data file {p} is empty")
    return p


def resolve_format(path: Path, format: str | None) -> str:
    if format is not None:
        fmt = {"h5": "hdf5", "ndjson": "jsonl", "pkl": "pickle", "tsv": "csv"}.get(format.lower(), format.lower())
        if fmt not in FORMATS:
            raise DataError(f"{path}: unknown format {format!r}; supported {supported_formats()}")
        return fmt
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: cannot infer the format from extension {path.suffix!r}; "
                        f"supported {supported_formats()}, or pass format=")
    return fmt


def check_options(fmt: str, options: dict[str, Any]) -> None:
    known = COMMON_OPTIONS | FORMAT_OPTIONS[fmt]
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(f"unknown option(s) {', '.join(unknown)} for format {fmt} (known: {', '.join(sorted(known))})")


READERS: dict[str, Callable[..., Dataset]] = {
    "json": read_json, "jsonl": read_jsonl, "csv": read_csv, "hdf5": read_hdf5,
    "npy": read_npy, "npz": read_npz, "bin": read_bin, "pickle": read_pickle,
}
