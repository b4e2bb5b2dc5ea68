"""Data specs: the config's ``data:`` mapping turned into (train, val) datasets.

```yaml
data:
  path: data/train.jsonl      # required
  format: jsonl               # default: from the extension
  val_path: data/val.jsonl    # or val_fraction: 0.1 (a deterministic split of train by the run's seed)
  fields: [x, y]              # any reader option (see docs/data.md)
  features: [a, b, c]         # tabular data: these columns stacked into x (float32), or "all but label"
  label: species              # ... and this column as y (int64 classes; text labels numbered in sorted order)
  streaming: false            # true: stream_dataset (path may be a glob); needs val_path for validation
  cache: 10000                # wrap in an LRU CachedDataset of this many items
  filter: mypkg.data:keep     # "module:callable" predicate: FilteredDataset / the stream's filter
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset, IterableDataset

from ..importing import import_object
from .cache import CachedDataset
from .loader import TensorData, split
from .errors import DataError
from .readers import EXTENSIONS, load_dataset
from .streaming import stream_dataset

SPEC_KEYS = ("path", "format", "val_path", "val_fraction", "streaming", "cache", "filter", "features", "label")


def spec_dict(spec: Any) -> dict[str, Any]:
    """A plain dict from a dict or a pydantic model (``trainforge.config.DataSpec``, extras included)."""
    if isinstance(spec, dict):
        return dict(spec)
    if hasattr(spec, "model_dump"):
        return spec.model_dump()
    raise DataError(f"a data spec must be a mapping like {{path: ..., format: ...}}, got {type(spec).__name__}")


def build_data(spec: Any, seed: int = 0) -> tuple[Dataset | IterableDataset, Dataset | IterableDataset | None]:
    """(train, val) from a spec; val from ``val_path``, else a ``val_fraction`` split, else None."""
    d = spec_dict(spec)
    path = d.pop("path", None)
    if not path:
        raise DataError("data spec needs path: the training data file")
    fmt = d.pop("format", None)
    val_path = d.pop("val_path", None)
    val_fraction = float(d.pop("val_fraction", 0.0) or 0.0)
    streaming = bool(d.pop("streaming", False))
    cache = d.pop("cache", None)
    predicate = resolve_callable(d.pop("filter", None))
    features, label = d.pop("features", None), d.pop("label", None)
    options = d
    if features is not None and label is None:
        raise DataError("data spec: features needs label: the column to predict (e.g. label: target)")
    if val_path and val_fraction > 0:
        raise DataError("data spec: give val_path or val_fraction, not both")
    if not 0 <= val_fraction < 1:
        raise DataError(f"data spec: val_fraction must be in [0, 1), got {val_fraction}")

    if streaming:
        if label is not None:
            raise DataError("data spec: features/label apply to a table read whole, not to streaming: true")
        if val_fraction > 0:
            raise DataError("data spec: a streamed dataset cannot be split; give val_path instead of val_fraction")
        if cache:
            raise DataError("data spec: cache applies to map-style data, not to streaming: true")
        fmt = fmt or stream_format(path)
        options.setdefault("seed", seed)
        train = stream_dataset(path, fmt, filter=predicate, **options)
        val = None
        if val_path:
            val = stream_dataset(val_path, fmt, filter=predicate, **{**options, "shuffle": False})
        return train, val

    if predicate is not None:
        options["filter"] = predicate
    if "random_windows" in options:
        options.setdefault("seed", seed)  # random token windows follow the run's seed
    train = load_dataset(path, fmt, **options)
    val = load_dataset(val_path, fmt, **options) if val_path else None
    if label is not None:
        train = features_and_label(train, features, label, str(path))
        classes = getattr(train, "classes", None)
        val = features_and_label(val, features, label, str(val_path), classes) if val is not None else None
    if val is None and val_fraction > 0:
        train, val = split(train, val_fraction, seed)
    if cache:
        train = CachedDataset(train, int(cache))
        val = CachedDataset(val, int(cache)) if val is not None else None
    return train, val


def stream_format(path: Any) -> str:
    """The format of a streamed path or glob from its extension (``shards/*.bin`` -> bin)."""
    text = str(path[0] if isinstance(path, (list, tuple)) and path else path)
    for ext, fmt in EXTENSIONS.items():
        if text.lower().endswith(ext) and fmt in ("jsonl", "bin"):
            return fmt
    raise DataError(f"data spec: cannot tell the stream format of {text!r}; give format: jsonl or format: bin")


def resolve_callable(ref: Any) -> Callable | None:
    """A callable, or "module:name" imported (like the config's model: field)."""
    if ref is None or callable(ref):
        return ref
    try:
        return import_object(ref, callable_only=True)
    except ValueError as e:
        raise DataError(f"data spec: cannot import filter ({e})") from None


def fit_data(train_data: Any, val_data: Any, cfg: Any) -> tuple[Any, Any]:
    """What ``Trainer.fit`` trains on: a data spec given to it (or, given nothing, the config's
    ``data`` spec) becomes (train, val); anything else passes through."""
    spec = train_data if train_data is not None else getattr(cfg, "data", None)
    if _is_spec(spec):
        train, spec_val = build_data(spec, seed=cfg.seed)
        return train, val_data if val_data is not None else spec_val
    if train_data is None:
        raise ValueError("fit() needs training data: pass it, or set `data` in the config to a data spec")
    return train_data, val_data


def data_files(train_data: Any, cfg: Any) -> list[Path]:
    """The files a data spec trains on (for the data fingerprint): the spec given to ``fit``, else the
    config's (from which ``trainforge train`` built the datasets it passes); none for in-memory data."""
    spec = train_data if _is_spec(train_data) else getattr(cfg, "data", None)
    if isinstance(spec, str) and ":" not in spec:
        return [Path(spec)]
    if not _is_spec(spec):
        return []
    path = spec.path if not isinstance(spec, dict) else spec.get("path")
    return [Path(path)] if isinstance(path, (str, Path)) else []


def _is_spec(value: Any) -> bool:
    from ..config import DataSpec
    return isinstance(value, DataSpec) or (isinstance(value, dict) and "path" in value)


def features_and_label(data: Any, features: Any, label: str, where: str,
                       classes: list[str] | None = None) -> TensorData:
    """A table's feature columns stacked into ``x`` [N, F] float32 and its label column as ``y``:
    int64 for whole numbers (classes), float32 otherwise (regression); a text label is numbered by
    its sorted class names (``dataset.classes``; a validation file reuses the training names)."""
    columns = getattr(data, "columns", None)
    if columns is None:
        raise DataError(f"{where}: features/label need a table (csv, json, jsonl), not {type(data).__name__}")
    if label not in columns:
        raise DataError(f"{where}: no label column {label!r} (columns: {', '.join(columns)})")
    if features in (None, "all but label"):
        names = [c for c in columns if c != label]
    elif isinstance(features, (list, tuple)) and features and all(isinstance(f, str) for f in features):
        names = list(features)
    else:
        raise DataError(f"{where}: features must be a list of column names or \"all but label\", got {features!r}")
    missing = [n for n in names if n not in columns]
    if missing:
        raise DataError(f"{where}: no feature column(s) {missing} (columns: {', '.join(columns)})")
    for name in names:
        column = columns[name]
        if not isinstance(column, torch.Tensor) or column.dim() != 1:
            example = column[0] if isinstance(column, list) and column else column
            raise DataError(f"{where}: feature column {name!r} is not numeric (e.g. {example!r}); "
                            "features must be numbers: drop it from features or encode it")
    x = torch.stack([columns[n].float() for n in names], dim=1)
    y = columns[label]
    if isinstance(y, list) and all(isinstance(v, str) for v in y):
        known = classes if classes is not None else sorted(set(y))
        unknown = sorted(set(y) - set(known))
        if unknown:
            raise DataError(f"{where}: label value(s) {unknown[:5]} not among the training classes {known[:10]}")
        index = {name: i for i, name in enumerate(known)}
        y, classes = torch.tensor([index[v] for v in y], dtype=torch.long), known
    elif not isinstance(y, torch.Tensor) or y.dim() != 1:
        raise DataError(f"{where}: label column {label!r} must hold one number or one class name per row")
    else:
        y = y.long() if not torch.is_floating_point(y) else y.float()
    table = TensorData(x, y)
    table.feature_names, table.classes = names, classes
    return table
