"""CachedDataset (an LRU cache with hit/miss statistics) and FilteredDataset (a quality filter).

Both report ``stats()`` as a flat dict of metric names (``cache/hits``, ``data/dropped``, ...) that
the trainer can log as they are. Counters live in shared memory, so the counts made inside
DataLoader worker processes show up in the main process too.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset, get_worker_info

from .errors import DataError

SLOTS = 257  # slot 0: the main process; slot 1 + worker id % 256: each DataLoader worker


class SharedCounters:
    """Named integer counters that every DataLoader worker can add to without a lock.

    One row per process (each writes only its own), summed on read. The tensor is in shared
    memory: forked workers write the same pages, spawned ones receive it as a shared handle.
    """

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.table = torch.zeros(SLOTS, len(self.names), dtype=torch.int64).share_memory_()
        self._view = None  # a numpy view of the table: a numpy add is ~20x cheaper than a tensor op

    def add(self, name: str, n: int = 1) -> None:
        # the slot is looked up every time: a forked worker inherits this object as it was
        info = get_worker_info()
        slot = 0 if info is None else 1 + info.id % (SLOTS - 1)
        if self._view is None:
            self._view = self.table.numpy()
        self._view[slot, self.names.index(name)] += n

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_view": None}  # rebuilt over the shared table after unpickling

    def totals(self) -> dict[str, int]:
        sums = self.table.sum(0).tolist()
        return dict(zip(self.names, sums))

    def reset(self) -> None:
        self.table.zero_()

    def load(self, values: dict[str, int]) -> None:
        """Restore totals (e.g. from a checkpoint): they go to the main process's row."""
        self.reset()
        for name, v in values.items():
            self.table[0, self.names.index(name)] = int(v)


class CachedDataset(Dataset):
    """Keeps the ``capacity`` most recently used items of ``dataset`` (least recently used goes first).

    Worth it when items are costly to make (decoding, parsing, a slow disk) and are revisited.
    Each process keeps its own cache: with DataLoader workers, each worker caches what it loads,
    and the cache lives as long as the worker does. Cached items are returned as stored, so do
    not modify them in place.
    """

    def __init__(self, dataset: Any, capacity: int):
        if int(capacity) < 1:
            raise DataError(f"cache capacity must be >= 1, got {capacity}")
        self.dataset = dataset
        self.capacity = int(capacity)
        self._items: OrderedDict[int, Any] = OrderedDict()
        self.counters = SharedCounters(["hits", "misses", "evictions"])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if index in self._items:
            self._items.move_to_end(index)
            self.counters.add("hits")
            return self._items[index]
        self.counters.add("misses")
        item = self.dataset[index]
        self._items[index] = item
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
            self.counters.add("evictions")
        return item

    def __getstate__(self) -> dict:
        # a worker starts with an empty cache rather than a pickled copy of the parent's
        return {**self.__dict__, "_items": OrderedDict()}

    def stats(self) -> dict[str, float]:
        c = self.counters.totals()
        looked_up = c["hits"] + c["misses"]
        inner = getattr(self.dataset, "stats", None)  # a wrapped filter's counts travel up
        return {**(inner() if callable(inner) else {}), "cache/hits": c["hits"], "cache/misses": c["misses"], "cache/evictions": c["evictions"],
                "cache/hit_rate": c["hits"] / looked_up if looked_up else 0.0}

    def reset_stats(self) -> None:
        self.counters.reset()

    def clear(self) -> None:
        self._items.clear()

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on; items that depend on it (random windows) must then be loaded afresh."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
            self._items.clear()


class FilteredDataset(Dataset):
    """The items of ``dataset`` for which ``predicate(item)`` is true, chosen once when built.

    Every item is loaded once here, so the training loop never meets a dropped item and the
    length is exact. ``dropped`` counts the rest; ``stats()`` -> ``{"data/dropped": dropped}``.
    """

    def __init__(self, dataset: Any, predicate: Callable[[Any], bool]):
        if not callable(predicate):
            raise DataError(f"filter must be a callable item -> bool, got {type(predicate).__name__}")
        self.dataset = dataset
        self.predicate = predicate
        self.indices = [i for i in range(len(dataset)) if predicate(dataset[i])]
        self.dropped = len(dataset) - len(self.indices)
        if not self.indices:
            raise DataError(f"the filter dropped all {len(dataset)} samples")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]

    def stats(self) -> dict[str, int]:
        return {"data/dropped": self.dropped}
