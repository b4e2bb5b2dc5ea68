"""Text formats: json (a list of records), jsonl (one record a line) and csv/tsv (a header row).

Records become a RecordDataset stored column by column: numeric fields as one tensor per column
(an item's value a 0-d or, for lists, 1-d tensor), strings as they are.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from .dtypes import field_dtypes
from .errors import DataError


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
    for f in fields:
        check_mostly_numeric([rec[f] for rec in records], lines, where, f)
    dtypes = field_dtypes(dtype, fields, where)
    strict = isinstance(dtype, dict)  # one dtype for all applies to the numeric fields only
    columns = {f: make_column([rec[f] for rec in records], dtypes.get(f), f"{where}: field {f!r}", strict)
               for f in fields}
    return RecordDataset(columns, len(records))


def check_mostly_numeric(values: list, lines: Sequence, where: str, name: str) -> None:
    """A field that is a number in most records and not in a few (null, "n/a") is an error naming
    the record: as a list of mixed values it would reach the model as something it cannot use."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    bad = [i for i, v in enumerate(values) if not number(v)]
    if bad and len(bad) * 2 < len(values) and all(not isinstance(values[i], (list, dict)) for i in bad):
        i = bad[0]
        more = f" (and {len(bad) - 1} more like it)" if len(bad) > 1 else ""
        raise DataError(f"{where}:{lines[i]}: field {name!r}: value {values[i]!r} is not a number, but the field's "
                        f"other values are{more}; fix or drop the record")


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
    columns = {name: parse_cells([r[j] for r in rows], (path, lines, name) if fields is None or name in fields else None)
               for j, name in enumerate(header)}
    records = [{name: columns[name][i] for name in header} for i in range(len(rows))]
    return records_to_dataset(records, lines, str(path), fields, dtype)


def parse_cells(cells: list[str], where: tuple[Path, list, str] | None = None) -> list:
    """The column as ints if every cell is one, else floats, else the strings as they are.

    A column that is mostly numbers with a few cells that are not (``n/a``, an empty cell, a typo)
    is an error naming file, line, column and cell (``where``: path, line numbers, column name):
    read as text, the whole column would silently stop being a feature."""
    for kind in (int, float):
        try:
            return [kind(c) for c in cells]
        except ValueError:
            continue
    if where is not None:
        bad = [i for i, c in enumerate(cells) if not _is_number(c)]
        if len(bad) * 2 < len(cells):  # mostly numbers: the others are mistakes, not text
            path, lines, name = where
            i = bad[0]
            more = f" (and {len(bad) - 1} more cell(s) like it)" if len(bad) > 1 else ""
            raise DataError(f"{path}:{lines[i]}: column {name!r}: cell {cells[i]!r} is not a number, but the "
                            f"column's other cells are{more}; fix or drop the row (or leave the column out with "
                            "`fields`)")
    return cells


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a leading byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); is the format right?") from None
