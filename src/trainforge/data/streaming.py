"""Streaming datasets: files larger than memory, read in order, split across workers and ranks.

``stream_dataset(paths_or_glob, format="jsonl" | "bin", ...)`` gives an IterableDataset.

How an epoch's records are dealt out (the same arithmetic in every process, so no record is read
twice and none is missed):

- The epoch's stream is the files in order (a permutation of them per (seed, epoch) when
  ``shuffle=True``), each file's records in order. Record ``g`` of it goes to rank ``g % world_size``:
  that rank's stream is records ``r, r + R, r + 2R, ...``; rank-local index ``i = g // R``.
- Within a rank, DataLoader workers take turns by whole batches: batch ``b`` of the rank's stream
  (records ``b*B .. b*B + B - 1``) is made by worker ``b % num_workers``. The DataLoader collects
  batches from its workers round-robin, so the batches arrive in the same order whatever the number
  of workers: the same as ``num_workers=0``. (Without a known batch size, workers take turns record
  by record: still no duplicates or gaps, but batches then differ with the number of workers.)
- A resume starts at a position (``skip_batches(n)`` or ``load_state_dict``): records before it are
  not parsed: a ``.bin`` window's offset is computed, a JSONL line is passed over without ``json.loads``.
  With a ``filter``, kept records must be counted, so the skipped ones are parsed and filtered.
"""

from __future__ import annotations

import bisect
import glob
import itertools
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .cache import SharedCounters
from .loader import epoch_seed
from .dtypes import field_dtypes, torch_dtype
from .errors import DataError
from .readers import check_file
from .text_formats import parse_json_line

STREAM_FORMATS = ("jsonl", "bin")
STREAM_OPTIONS = {"common": {"batch_size", "shuffle", "seed", "rank", "world_size", "filter"},
                  "jsonl": {"fields", "dtype", "as_tuple"}, "bin": {"dtype", "context", "stride"}}
INF = float("inf")
_decode = json.JSONDecoder().decode  # one line of JSON text -> a value


def stream_dataset(paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike], format: str = "jsonl",
                   **options: Any) -> "StreamingDataset":
    """An IterableDataset over one or many files (paths, globs like ``shards/*.jsonl``, or a list of both).

    Common options: ``batch_size`` (set by ``make_loader`` when not given; needed to resume by
    batches), ``shuffle`` (shard order per epoch), ``seed``, ``rank`` / ``world_size`` (default:
    torch.distributed when initialized, else env RANK / WORLD_SIZE, else 0 / 1), ``filter`` (a
    predicate on items; drops are counted in ``stats()``).
    jsonl: ``fields``, ``dtype``, ``as_tuple``. bin: ``dtype`` (on disk, required), ``context``
    (required; items are ``context + 1`` int64 tokens), ``stride`` (default ``context``).
    """
    fmt = str(format).lower()
    if fmt not in STREAM_FORMATS:
        raise DataError(f"stream_dataset: format {format!r} cannot be streamed; use one of {', '.join(STREAM_FORMATS)} "
                        f"(or load_dataset for files that fit in memory)")
    known = STREAM_OPTIONS["common"] | STREAM_OPTIONS[fmt]
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(f"unknown option(s) {', '.join(unknown)} for a {fmt} stream (known: {', '.join(sorted(known))})")
    files = resolve_paths(paths_or_glob)
    cls = JsonlStream if fmt == "jsonl" else TokenStream
    return cls(files, **options)


def resolve_paths(paths_or_glob: Any) -> list[Path]:
    """Paths and globs, in the order given (each glob's matches sorted), each checked to be a non-empty file."""
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    files: list[Path] = []
    for item in items:
        text = str(item)
        if glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise DataError(f"no files match {text!r}")
            files.extend(Path(m) for m in matches)
        elif Path(text).is_dir():
            raise DataError(f"{text} is a directory; give its files or a glob such as {text}/*.jsonl")
        else:
            files.append(Path(text))
    if not files:
        raise DataError("stream_dataset: no files given")
    for f in files:
        check_file(f)
    return files


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else torch.distributed when initialized, else env RANK / WORLD_SIZE, else 0 / 1."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            r, w = dist.get_rank(), dist.get_world_size()
        else:
            r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if not (world_size >= 1 and 0 <= rank < world_size):
        raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
    return int(rank), int(world_size)


def owned_indices(start: int, block: int, workers: int, role: int, stop: float) -> Iterator[int]:
    """Indices ``i >= start`` (``< stop``) whose block ``i // block`` is dealt to ``role`` (``% workers``)."""
    if workers == 1:  # everything is owned: no per-index work
        return itertools.count(start) if stop == INF else iter(range(start, int(stop)))
    return _dealt_indices(start, block, workers, role, stop)


def _dealt_indices(start: int, block: int, workers: int, role: int, stop: float) -> Iterator[int]:
    i = start
    while i < stop:
        b = i // block
        if b % workers != role:
            i = (b + (role - b) % workers) * block  # first index of this role's next block
            continue
        end = (b + 1) * block if stop == INF else min((b + 1) * block, int(stop))
        yield from range(i, end)
        i = end


class StreamingDataset(IterableDataset):
    """Base class: dealing records to ranks and workers, epochs, resume positions, the filter.

    A subclass provides ``_count()`` (records in the epoch's stream, all ranks, or None if unknown
    without a scan) and ``_read(order, rank, world, owned)`` yielding the records whose rank-local
    index comes out of ``owned``, in order.
    """

    def __init__(self, files: Sequence[Path], *, batch_size: int | None = None, shuffle: bool = False,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 filter: Callable[[Any], bool] | None = None):
        if batch_size is not None and int(batch_size) < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if filter is not None and not callable(filter):
            raise DataError(f"filter must be a callable item -> bool, got {type(filter).__name__}")
        self.files = [Path(f) for f in files]
        self.batch_size = int(batch_size) if batch_size is not None else None
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.filter = filter
        self.epoch = 0
        self.position = 0  # records of this rank's stream already consumed this epoch
        self.delivered = 0  # records yielded by this process since the position was set (num_workers=0)
        self.counters = SharedCounters(["dropped"])

    # -- positioning -----------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start of ``epoch`` (position 0). The drop count restarts when the epoch changes."""
        if int(epoch) != self.epoch:
            self.counters.reset()
        self.epoch, self.position, self.delivered = int(epoch), 0, 0

    def set_batch_size(self, batch_size: int) -> None:
        """Called by make_loader: the DataLoader's batch size, for dealing batches to workers."""
        if self.batch_size is not None and self.batch_size != batch_size:
            raise DataError(f"the stream was built with batch_size={self.batch_size} but the loader "
                            f"uses batch_size={batch_size}; give the same (or leave the stream's unset)")
        self.batch_size = int(batch_size)

    def skip_batches(self, n: int) -> None:
        """Resume this epoch after ``n`` batches (of ``batch_size``) of this rank have been consumed."""
        if self.batch_size is None:
            raise DataError("skip_batches needs the batch size: give stream_dataset(batch_size=...) "
                            "or build the loader with make_loader")
        self.position, self.delivered = int(n) * self.batch_size, 0

    def state_dict(self) -> dict[str, int]:
        """Where this process stands: with ``num_workers=0`` that is what has been consumed; with
        workers the main process cannot see them, so resume by batches (``skip_batches``)."""
        return {"epoch": self.epoch, "seed": self.seed, "position": self.position + self.delivered,
                "dropped": self.counters.totals()["dropped"]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state.get("seed", self.seed))
        self.position, self.delivered = int(state["position"]), 0
        self.counters.load({"dropped": int(state.get("dropped", 0))})

    def stats(self) -> dict[str, int]:
        return {"data/dropped": self.counters.totals()["dropped"]} if self.filter is not None else {}

    # -- order -----------------------------------------------------------------------------------
    def file_order(self, epoch: int | None = None) -> list[int]:
        """The epoch's file order: a pure function of (seed, epoch) when shuffling."""
        n = len(self.files)
        if not self.shuffle or n == 1:
            return list(range(n))
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch if epoch is None else epoch, salt=3))
        return torch.randperm(n, generator=g).tolist()

    def rank_count(self) -> int | None:
        total = self._count()
        if total is None:
            return None
        return max(0, (total - self.rank + self.world_size - 1) // self.world_size)

    def __len__(self) -> int:
        """Records this rank has left this epoch (a DataLoader makes ``ceil(len / batch_size)`` batches)."""
        if self.filter is not None:
            raise TypeError("the length of a filtered stream is not known before reading it")
        return max(0, self.rank_count() - self.position)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        owned, own_skip = self._plan(workers, worker)
        items = self._read(self.file_order(), self.rank, self.world_size, owned)
        if self.filter is not None:
            items = self._filtered(items, own_skip)
        finish = self._finish
        if info is None:  # only the main process's count is visible to state_dict()
            self.delivered = 0
            for item in items:
                self.delivered += 1
                yield finish(item) if finish else item
        else:
            for item in items:
                yield finish(item) if finish else item

    def _plan(self, workers: int, worker: int) -> tuple[Iterator[int], int]:
        """(the rank-local indices this process reads, how many kept records of them to skip first)."""
        block = self.batch_size or 1
        n, rest = divmod(self.position, block)
        if workers > 1 and rest:
            raise DataError(f"cannot resume at record {self.position} with {workers} workers: "
                            f"it is not a whole number of batches of {block}")
        # The DataLoader asks worker 0 first; after n batches, worker 0 plays the part that worker
        # n % workers played, so the batches continue in the uninterrupted order.
        role = (worker + n) % workers
        own_skip = self.position if workers == 1 else (n - role + workers - 1) // workers * block
        start = 0
        if self.filter is None:  # jump straight there: the records before are never parsed
            start = (own_skip // block * workers + role) * block + own_skip % block
            own_skip = 0
        stop = self.rank_count() if self._count_is_cheap() else INF
        return owned_indices(start, block, workers, role, stop), own_skip

    def _filtered(self, items: Iterator[Any], own_skip: int) -> Iterator[Any]:
        """Kept items only, counting drops; the first ``own_skip`` kept ones were consumed before a resume."""
        keep = self.filter
        for item in items:
            if not keep(item):
                if not own_skip:  # drops before the resume point were counted by the first run
                    self.counters.add("dropped")
            elif own_skip:
                own_skip -= 1
            else:
                yield item

    # -- for subclasses ----------------------------------------------------------------------------
    # _finish(item) -> the item as delivered, applied after the filter (which sees named fields)
    _finish: Callable[[Any], Any] | None = None

    def _count(self) -> int | None:
        raise NotImplementedError

    def _count_is_cheap(self) -> bool:
        return False

    def _read(self, order: list[int], rank: int, world: int, owned: Iterator[int]) -> Iterator[Any]:
        raise NotImplementedError


class JsonlStream(StreamingDataset):
    """JSON Lines shards read line by line; only the lines this process owns are parsed."""

    def __init__(self, files: Sequence[Path], *, fields: Sequence[str] | None = None, dtype: Any = None,
                 as_tuple: bool = False, **common: Any):
        super().__init__(files, **common)
        self.fields = list(fields) if fields is not None else None
        # one dtype for every numeric field, or {field: dtype}
        self.dtype_all = None if dtype is None or isinstance(dtype, dict) else torch_dtype(dtype, "stream_dataset: dtype")
        self.dtype_by_field = field_dtypes(dtype, self.fields or list(dtype), "stream_dataset") \
            if isinstance(dtype, dict) else {}
        self.as_tuple = bool(as_tuple)
        if self.as_tuple and self.fields is None:
            raise DataError("as_tuple needs fields=[...] to fix the order of the tuple")
        self._plain = self.fields is None and self.dtype_all is None and not self.dtype_by_field
        self._line_counts: dict[int, int] = {}
        for path in self.files:  # catch a wrong format or a broken shard now, not mid-epoch
            self._convert(first_record(path), path, first_line(path))

    def _count(self) -> int:
        """Records (non-blank lines) in all files: one scan without parsing, remembered."""
        for k, path in enumerate(self.files):
            if k not in self._line_counts:
                with open(path, "rb") as f:
                    self._line_counts[k] = sum(1 for line in f if not line.isspace())
        return sum(self._line_counts.values())

    def _convert(self, record: Any, path: Path, lineno: int) -> Any:
        """Selected fields; lists (and numbers with a dtype) as tensors."""
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: a record must be an object of fields, got {type(record).__name__}")
        if self._plain:  # the common case, kept cheap: nothing to do unless a value is a list
            for v in record.values():
                if type(v) is list:
                    break
            else:
                return record
        if self.fields is not None:
            try:
                record = {f: record[f] for f in self.fields}
            except KeyError as e:
                raise DataError(f"{path}:{lineno}: record lacks field {e.args[0]!r} (fields: {self.fields})") from None
        for f, v in record.items():
            dt = self.dtype_by_field.get(f, self.dtype_all)
            if isinstance(v, list) or (dt is not None and isinstance(v, (int, float, bool))):
                try:
                    record[f] = torch.tensor(v, dtype=dt)
                except (TypeError, ValueError, RuntimeError) as e:
                    raise DataError(f"{path}:{lineno}: field {f!r} cannot become a tensor ({e})") from None
        return record

    @property
    def _finish(self) -> Callable[[dict], Any] | None:
        return self._tuple if self.as_tuple else None

    def _tuple(self, record: dict) -> tuple:
        return tuple(record[f] for f in self.fields)

    def _read(self, order: list[int], rank: int, world: int, owned: Iterator[int]) -> Iterator[Any]:
        nxt = next(owned, None)
        if nxt is None:
            return
        want = nxt * world + rank  # the next global record index to parse
        g = 0
        decode, convert = _decode, self._convert
        for k in order:
            path = self.files[k]
            with open(path, "rb") as f:
                for lineno, line in enumerate(f, 1):
                    if line.isspace():
                        continue
                    if g == want:
                        try:  # str input skips json.loads's encoding detection on bytes
                            record = decode(line.decode())
                        except ValueError:  # bad JSON or bad UTF-8: say where (or take a BOM'd line)
                            record = parse_json_line(line, path, lineno)
                        yield convert(record, path, lineno)
                        nxt = next(owned, None)
                        if nxt is None:
                            return
                        want = nxt * world + rank
                    g += 1


def first_line(path: Path) -> int:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.isspace():
                return lineno
    raise DataError(f"{path} has only blank lines")


def first_record(path: Path) -> Any:
    lineno = first_line(path)
    with open(path, "rb") as f:
        for _ in range(lineno - 1):
            f.readline()
        return parse_json_line(f.readline(), path, lineno)


class TokenStream(StreamingDataset):
    """Windows of ``context + 1`` tokens from raw binary token shards (memory-mapped).

    Windows sit at offsets ``0, stride, 2*stride, ...`` of each shard and never cross from one
    shard into the next. Every window's place is arithmetic, so skipping costs nothing.
    """

    def __init__(self, files: Sequence[Path], *, dtype: Any = None, context: int | None = None,
                 stride: int | None = None, **common: Any):
        super().__init__(files, **common)
        if dtype is None:
            raise DataError("a bin stream needs dtype= (the on-disk token type, e.g. uint16)")
        if context is None or int(context) < 1:
            raise DataError(f"a bin stream needs context= >= 1 (items are context + 1 tokens), got {context}")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise DataError(f"unknown dtype {dtype!r} (e.g. uint16, int32)") from None
        self.context = int(context)
        self.stride = int(stride) if stride is not None else self.context
        if self.stride < 1:
            raise DataError(f"stride must be >= 1, got {stride}")
        self.windows = [self._windows_in(p) for p in self.files]
        if not sum(self.windows):
            raise DataError(f"no shard holds a whole window of context + 1 = {self.context + 1} tokens")
        self._maps: dict[int, np.ndarray] = {}

    def _windows_in(self, path: Path) -> int:
        size = path.stat().st_size
        if size % self.dtype.itemsize:
            raise DataError(f"{path}: {size} bytes is not a multiple of the {self.dtype} item size "
                            f"({self.dtype.itemsize}); is dtype right?")
        tokens = size // self.dtype.itemsize
        return 0 if tokens < self.context + 1 else (tokens - self.context - 1) // self.stride + 1

    def _count(self) -> int:
        return sum(self.windows)

    def _count_is_cheap(self) -> bool:
        return True

    def _map(self, k: int) -> np.ndarray:
        if k not in self._maps:
            # a plain ndarray view of the mapping: slicing it skips np.memmap's per-slice Python hooks
            self._maps[k] = np.asarray(np.memmap(self.files[k], dtype=self.dtype, mode="r"))
        return self._maps[k]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}  # a spawned worker maps the files itself

    def _read(self, order: list[int], rank: int, world: int, owned: Iterator[int]) -> Iterator[Any]:
        ends = np.cumsum([self.windows[k] for k in order]).tolist()  # global window index where each file ends
        span = self.context + 1
        for i in owned:
            g = i * world + rank
            j = bisect.bisect_right(ends, g)
            start = (g - (ends[j - 1] if j else 0)) * self.stride
            window = self._map(order[j])[start:start + span]
            yield torch.from_numpy(window.astype(np.int64))
