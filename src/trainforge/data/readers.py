"""Readers: one call, ``load_dataset(path)``, turns a data file into a map-style dataset.

Every check happens here, when the dataset is built: a missing file, an unknown extension, a
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
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """A bad data file or option: the message names the file, line, key or field, and the fix."""


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


# --- entry point ----------------------------------------------------------------------------------

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
        from .cache import FilteredDataset  # cache.py imports DataError from here
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


# --- dtypes -----------------------------------------------------------------------------------------

def torch_dtype(spec: Any, where: str = "dtype") -> torch.dtype:
    """'float32' | 'int64' | torch.float32 | np.float32 -> torch.dtype, or DataError."""
    if isinstance(spec, torch.dtype):
        return spec
    try:
        name = np.dtype(spec).name if not isinstance(spec, str) else spec
    except TypeError:
        name = str(spec)
    dt = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dt, torch.dtype):
        raise DataError(f"{where}: unknown dtype {spec!r} (e.g. float32, int64, bool)")
    return dt


def field_dtypes(dtype: Any, fields: Sequence[str], where: str) -> dict[str, torch.dtype]:
    """``dtype`` as one dtype for every field or a ``{field: dtype}`` mapping (fields must exist)."""
    if dtype is None:
        return {}
    if isinstance(dtype, dict):
        unknown = [k for k in dtype if k not in fields]
        if unknown:
            raise DataError(f"{where}: dtype names unknown field(s) {unknown} (fields: {list(fields)})")
        return {k: torch_dtype(v, f"{where}: dtype of {k}") for k, v in dtype.items()}
    dt = torch_dtype(dtype, f"{where}: dtype")
    return {k: dt for k in fields}


def to_tensor(array: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A fresh tensor from an array row (never a view into a memmap or file buffer).

    Unsigned integers wider than 8 bits become int64: token ids are indices, and torch's uint16/32
    support stops short of embedding lookups. float64 becomes float32 (what models train in) unless
    ``dtype`` says otherwise.
    """
    a = np.asarray(array)
    if a.dtype.kind == "u" and a.dtype.itemsize > 1:
        a = a.astype(np.int64)
    elif a.dtype == np.float64 and dtype is None:
        a = a.astype(np.float32)
    else:
        a = np.array(a, copy=True)
    t = torch.from_numpy(a)
    return t if dtype is None else t.to(dtype)


# --- records: json, jsonl, csv ----------------------------------------------------------------------

class RecordDataset(Dataset):
    """Records stored column by column: numeric columns as one tensor, others as a list."""

    def __init__(self, columns: dict[str, Any], length: int, as_tuple: bool = False):
        self.columns = columns
        self.fields = list(columns)
        self.length = length
        self.as_tuple = as_tuple

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        if self.as_tuple:
            return tuple(self.columns[f][index] for f in self.fields)
        return {f: self.columns[f][index] for f in self.fields}

    def __repr__(self) -> str:
        return f"RecordDataset(len={self.length}, fields={self.fields})"


def records_to_dataset(records: Sequence[dict], lines: Sequence[int], where: str,
                       fields: Sequence[str] | None = None, dtype: Any = None) -> RecordDataset:
    """Check every record has the selected fields, then store each field as one column.

    ``lines[i]`` is where record ``i`` came from (a line number, or a record number), for errors.
    """
    if not records:
        raise DataError(f"{where} has no records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{where}:{lines[i]}: a record must be an object of fields, got {type(rec).__name__}")
    available = list(records[0])
    if fields is None:
        fields = available
    else:
        fields = list(fields)
        missing = [f for f in fields if f not in records[0]]
        if missing:
            raise DataError(f"{where}:{lines[0]}: no field(s) {missing} (fields there: {available})")
    for i, rec in enumerate(records):
        absent = [f for f in fields if f not in rec]
        if absent:
            raise DataError(f"{where}:{lines[i]}: record lacks field(s) {absent} (every record needs {list(fields)})")
    dtypes = field_dtypes(dtype, fields, where)
    strict = isinstance(dtype, dict)  # one dtype for all applies to the numeric fields only
    columns = {f: make_column([rec[f] for rec in records], dtypes.get(f), f"{where}: field {f!r}", strict)
               for f in fields}
    return RecordDataset(columns, len(records))


def make_column(values: list, dtype: torch.dtype | None, where: str, strict: bool = True) -> Any:
    """Numbers (or equal-length lists of numbers) -> one tensor; anything else stays a list."""
    numeric = all(isinstance(v, (bool, int, float)) for v in values)
    if not numeric and all(isinstance(v, list) for v in values):
        numeric = len({len(v) for v in values}) == 1 and all(
            isinstance(x, (bool, int, float)) for v in values for x in v)
        if not numeric:  # ragged: one tensor per record when the entries are numbers
            if dtype is not None and strict:
                return [torch.tensor(v, dtype=dtype) for v in values]
            return values
    if not numeric:
        if dtype is not None and strict:
            raise DataError(f"{where}: dtype {dtype} given but the values are not all numbers")
        return values
    try:
        t = torch.tensor(values)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{where}: cannot make a tensor: {e}") from None
    if dtype is not None:
        return t.to(dtype)
    return t.float() if t.is_floating_point() else t  # float64 JSON numbers -> float32 for training


def read_json(path: Path, fields: Sequence[str] | None = None, dtype: Any = None) -> RecordDataset:
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        raise DataError(f"{path}: holds an object of columns; a JSON data file must be a list of records "
                        f"[{{\"field\": value, ...}}, ...]")
    if not isinstance(data, list):
        raise DataError(f"{path}: a JSON data file must be a list of records, got a {type(data).__name__}")
    return records_to_dataset(data, [f"record {i}" for i in range(len(data))], str(path), fields, dtype)


def read_jsonl(path: Path, fields: Sequence[str] | None = None, dtype: Any = None) -> RecordDataset:
    records, lines = [], []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.isspace():
                continue
            records.append(parse_json_line(line, path, lineno))
            lines.append(lineno)
    return records_to_dataset(records, lines, str(path), fields, dtype)


def parse_json_line(line: bytes, path: Path | str, lineno: int) -> Any:
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}:{lineno}: invalid JSON line ({getattr(e, 'msg', e)})") from None


def read_csv(path: Path, fields: Sequence[str] | None = None, dtype: Any = None,
             delimiter: str | None = None) -> RecordDataset:
    """A CSV file with a header row; a column whose cells all parse as int (else float) is numeric."""
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # newline="" lets the csv module see quoted newlines inside fields
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise DataError(f"{path}: the first line must be a header of field names")
    rows, lines = [], []
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{reader.line_num}: {len(row)} fields, expected {len(header)} "
                            f"(header: {', '.join(header)})")
        rows.append(row)
        lines.append(reader.line_num)
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    columns = {name: parse_cells([r[j] for r in rows]) for j, name in enumerate(header)}
    records = [{name: columns[name][i] for name in header} for i in range(len(rows))]
    return records_to_dataset(records, lines, str(path), fields, dtype)


def parse_cells(cells: list[str]) -> list:
    """The column as ints if every cell is one, else floats, else the strings as they are."""
    for kind in (int, float):
        try:
            return [kind(c) for c in cells]
        except ValueError:
            continue
    return cells


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a leading byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); is the format right?") from None


# --- arrays: npy, npz, hdf5, bin --------------------------------------------------------------------

class ArrayDataset(Dataset):
    """Rows of one or more equal-length arrays (numpy, memmap, HDF5 datasets): tensor or dict items."""

    def __init__(self, arrays: dict[str, Any], dtypes: dict[str, torch.dtype] | None = None,
                 single: bool = False, as_tuple: bool = False):
        self.arrays = arrays
        self.keys = list(arrays)
        self.dtypes = dtypes or {}
        self.single = single  # one unnamed array (npy, bin): items are tensors, not dicts
        self.as_tuple = as_tuple
        self.length = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} rows")
        rows = {k: to_tensor(self.arrays[k][index], self.dtypes.get(k)) for k in self.keys}
        if self.single:
            return rows[self.keys[0]]
        return tuple(rows.values()) if self.as_tuple else rows

    def __repr__(self) -> str:
        return f"ArrayDataset(len={self.length}, keys={self.keys})"


def check_lengths(arrays: dict[str, Any], where: str) -> None:
    for k, a in arrays.items():
        if len(getattr(a, "shape", ())) == 0:
            raise DataError(f"{where}: array {k!r} is a scalar; every array needs a first (sample) dimension")
    lengths = {k: len(a) for k, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise DataError(f"{where}: arrays have different lengths ({shown}); every array needs one row per sample")
    if next(iter(lengths.values())) == 0:
        raise DataError(f"{where}: the arrays have no rows")


def select_keys(available: list[str], keys: Sequence[str] | None, where: str, what: str = "key") -> list[str]:
    if keys is None:
        if not available:
            raise DataError(f"{where}: holds no arrays")
        return available
    keys = [keys] if isinstance(keys, str) else list(keys)
    missing = [k for k in keys if k not in available]
    if missing:
        raise DataError(f"{where}: no {what}(s) {missing}; the file has {available}")
    return keys


class MappedArray:
    """A read-only ``np.memmap`` opened lazily in each process.

    It pickles as (path, dtype, shape, offset) so a DataLoader worker started with spawn reopens
    the file instead of receiving a copy of its whole contents (a plain memmap pickles its data).
    """

    def __init__(self, path: str | Path, dtype: Any, shape: tuple[int, ...], offset: int = 0, order: str = "C"):
        self.path, self.dtype, self.shape = str(path), np.dtype(dtype), tuple(shape)
        self.offset, self.order = offset, order
        self._map: np.memmap | None = None

    @property
    def map(self) -> np.memmap:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape,
                                  offset=self.offset, order=self.order)
        return self._map

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.map[index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}


def read_npy(path: Path, dtype: Any = None, context: int | None = None, **window: Any) -> Dataset:
    try:
        m = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) or "Python objects" in str(e):
            raise DataError(f"{path}: holds Python objects, which need unpickling; use numeric arrays "
                            f"(or format='pickle' with allow_pickle=True for files you trust)") from None
        raise DataError(f"{path}: not a valid .npy file ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: not a valid .npy file ({e})") from None
    order = "F" if m.flags.f_contiguous and not m.flags.c_contiguous else "C"
    arr = MappedArray(path, m.dtype, m.shape, m.offset, order)
    del m
    return array_or_windows(arr, path, dtype, context, window)


def read_bin(path: Path, dtype: Any = None, shape: Sequence[int] | None = None,
             context: int | None = None, **window: Any) -> Dataset:
    """Raw binary (e.g. uint16 token ids): ``dtype`` is the on-disk dtype; memory-mapped, never read whole."""
    if dtype is None:
        raise DataError(f"{path}: a .bin file needs dtype= (its on-disk element type, e.g. uint16)")
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        raise DataError(f"{path}: unknown dtype {dtype!r} (e.g. uint16, int32, float32)") from None
    shape = bin_shape(path, np_dtype, shape)
    return array_or_windows(MappedArray(path, np_dtype, shape), path, None, context, window)


def bin_shape(path: Path, dtype: np.dtype, shape: Sequence[int] | None) -> tuple[int, ...]:
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise DataError(f"{path}: {size} bytes is not a multiple of the {dtype} item size ({dtype.itemsize}); "
                        f"is dtype right?")
    n = size // dtype.itemsize
    if shape is None:
        return (n,)
    shape = [int(s) for s in ([shape] if isinstance(shape, int) else shape)]
    if shape.count(-1) > 1 or any(s < -1 or s == 0 for s in shape):
        raise DataError(f"{path}: shape {shape} must have positive sizes and at most one -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if n % known:
            raise DataError(f"{path}: {n} {dtype} items do not divide into shape {shape}")
        shape[shape.index(-1)] = n // known
    elif known != n:
        raise DataError(f"{path}: shape {shape} needs {known} {dtype} items, the file holds {n}")
    return tuple(shape)


def array_or_windows(arr: MappedArray, path: Path, dtype: Any, context: int | None, window: dict) -> Dataset:
    if context is None:
        if window:
            raise DataError(f"{path}: {', '.join(window)} need context=")
        check_lengths({"array": arr}, str(path))
        dtypes = {"array": torch_dtype(dtype, f"{path}: dtype")} if dtype is not None else {}
        return ArrayDataset({"array": arr}, dtypes, single=True)
    if arr.ndim != 1:
        raise DataError(f"{path}: context= needs a 1-D token array, the file's shape is {arr.shape}")
    from .tokens import TokenWindowDataset
    try:
        return TokenWindowDataset(arr.map, int(context), **window)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None


def read_npz(path: Path, keys: Sequence[str] | None = None, fields: Sequence[str] | None = None,
             dtype: Any = None) -> ArrayDataset:
    """The named arrays of an ``.npz`` (compressed archives cannot be mapped: each is read once)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = select_keys(list(z.files), keys or fields, str(path))
            arrays = {k: z[k] for k in names}
    except ValueError as e:
        raise DataError(f"{path}: cannot read array ({e})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a valid .npz file ({e})") from None
    check_lengths(arrays, str(path))
    return ArrayDataset(arrays, field_dtypes(dtype, names, str(path)))


class H5Array:
    """One HDF5 dataset, read row by row through a file handle opened once per process.

    h5py handles must not cross a fork, so each process (main, every DataLoader worker) opens its own.
    """

    def __init__(self, path: str | Path, key: str, shape: tuple[int, ...]):
        self.path, self.key, self.shape = str(path), key, tuple(shape)
        self._pid, self._ds = None, None

    def _dataset(self) -> Any:
        if self._pid != os.getpid():
            import h5py
            self._ds, self._pid = h5py.File(self.path, "r")[self.key], os.getpid()
        return self._ds

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        return self._dataset()[index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pid": None, "_ds": None}


def read_hdf5(path: Path, keys: Sequence[str] | None = None, fields: Sequence[str] | None = None,
              dtype: Any = None) -> ArrayDataset:
    import h5py
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a valid HDF5 file ({e})") from None
    with f:
        available = []
        f.visititems(lambda name, obj: available.append(name) if isinstance(obj, h5py.Dataset) else None)
        names = select_keys(available, keys or fields, str(path), "dataset")
        arrays = {k: H5Array(path, k, f[k].shape) for k in names}
    check_lengths(arrays, str(path))
    return ArrayDataset(arrays, field_dtypes(dtype, names, str(path)))


# --- pickle (opt-in) -------------------------------------------------------------------------------

class ListDataset(Dataset):
    """Items of a list, as they are."""

    def __init__(self, items: Sequence[Any]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


def read_pickle(path: Path, allow_pickle: bool = False, fields: Sequence[str] | None = None,
                dtype: Any = None) -> Dataset:
    if not allow_pickle:
        raise DataError(f"{path}: refusing to unpickle — a pickle can run arbitrary code when loaded. "
                        f"Pass allow_pickle=True only for a file you trust, or save the data as "
                        f".npz, .jsonl or .h5 instead")
    warnings.warn(f"unpickling {path}: pickle can run arbitrary code; load only files you trust",
                  UserWarning, stacklevel=3)
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    except Exception as e:  # a corrupt pickle can raise almost anything
        raise DataError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from None
    return object_to_dataset(obj, path, fields, dtype)


def object_to_dataset(obj: Any, path: Path, fields: Sequence[str] | None, dtype: Any) -> Dataset:
    where = str(path)
    if isinstance(obj, Dataset):
        return obj
    if isinstance(obj, dict) and obj and all(hasattr(v, "__len__") for v in obj.values()):
        arrays = {k: np.asarray(v) for k, v in obj.items()}
        names = select_keys(list(arrays), fields, where, "field")
        arrays = {k: arrays[k] for k in names}
        check_lengths(arrays, where)
        return ArrayDataset(arrays, field_dtypes(dtype, names, where))
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(r, dict) for r in obj):
        return records_to_dataset(list(obj), [f"record {i}" for i in range(len(obj))], where, fields, dtype)
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise DataError(f"{where}: the pickled list is empty")
        return ListDataset(obj)
    raise DataError(f"{where}: unpickled a {type(obj).__name__}; expected a Dataset, a list of samples "
                    f"or records, or a dict of equal-length arrays")


READERS: dict[str, Callable[..., Dataset]] = {
    "json": read_json, "jsonl": read_jsonl, "csv": read_csv, "hdf5": read_hdf5,
    "npy": read_npy, "npz": read_npz, "bin": read_bin, "pickle": read_pickle,
}
