"""Hugging Face ``datasets`` objects as trainforge data: the numeric columns as torch tensors.

A ``datasets.Dataset`` (map-style) goes through ``make_loader`` like any Dataset once its rows are
torch tensors: ``with_format("torch")`` on the columns that hold numbers (``input_ids``,
``attention_mask``, ``labels``, features); text columns stay out of the batch (tokenize them first,
e.g. with ``dataset.map(tokenizer, batched=True)``). Nothing here imports ``datasets``: an object is
recognised by what it has.
"""

from __future__ import annotations

from typing import Any

from .errors import DataError


def is_hf_dataset(data: Any) -> bool:
    return all(hasattr(data, a) for a in ("with_format", "column_names", "features", "select_columns"))


def _numeric(value: Any) -> bool:
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_numeric(v) for v in value)
    return hasattr(value, "dtype") and getattr(value.dtype, "kind", "f") in "biuf"  # numpy arrays


def as_torch(data: Any) -> Any:
    """The dataset with its numeric columns formatted as torch tensors (others dropped from batches)."""
    if len(data) == 0:
        return data
    first = data.with_format(None)[0]
    columns = [c for c in data.column_names if _numeric(first[c])]
    if not columns:
        raise DataError(f"the Hugging Face dataset has no numeric column (columns: {', '.join(data.column_names)}); "
                        "tokenize the text first, e.g. dataset.map(lambda b: tokenizer(b['text']), batched=True)")
    return data.with_format("torch", columns=columns)
