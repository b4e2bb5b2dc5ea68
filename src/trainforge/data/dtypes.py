"""dtypes and tensors for the readers: a dtype option turned into torch dtypes, an array row into a tensor."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .errors import DataError


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
