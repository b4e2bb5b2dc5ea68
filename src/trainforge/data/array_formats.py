"""Array formats: npy and raw bin (memory-mapped, never read whole), npz, hdf5 (read row by row),
and pickle (opt-in: unpickling can run code).

Items are the row as a tensor (npy, bin) or a dict ``{key: row tensor}`` (npz, hdf5); with
``context=`` a 1-D npy/bin token array becomes TokenWindowDataset windows instead.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .dtypes import field_dtypes, to_tensor, torch_dtype
from .errors import DataError
from .text_formats import records_to_dataset
from .tokens import TokenWindowDataset


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
