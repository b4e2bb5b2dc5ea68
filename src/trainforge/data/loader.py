"""Reproducible, resumable loading: ResumableSampler, seeded workers, collate, make_loader, split.

The order of an epoch is a pure function of (seed, epoch). A resume skips the consumed batches by
index (no batch is loaded to be thrown away), and the DataLoader's own generator is re-seeded from
(seed, epoch) before each epoch, so ``iter(loader)`` never draws from the global torch RNG
(a restored RNG state would otherwise change every worker's seed).
"""

from __future__ import annotations

import collections.abc as cabc
import math
import random
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, Subset, TensorDataset, get_worker_info

from .hf import as_torch, is_hf_dataset


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """A well-mixed 63-bit seed from (seed, epoch, salt); neighbouring inputs give unrelated seeds."""
    ss = np.random.SeedSequence([int(seed), int(epoch), int(salt)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


class ResumableSampler(Sampler[int]):
    """Yields dataset indices for one epoch; order = f(seed, epoch); can start ``skip_batches`` in.

    ``set_epoch(epoch, skip_batches)`` must be called before each epoch (the trainer does it).
    """

    def __init__(self, length: int, *, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if length < 0:
            raise ValueError("dataset length must be >= 0")
        self.length = length
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = epoch
        self.skip_batches = skip_batches

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.length)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.length, generator=g)

    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.length // self.batch_size
        return math.ceil(self.length / self.batch_size)

    def _bounds(self) -> tuple[int, int]:
        stop = min(self.length, self.batches_per_epoch() * self.batch_size)
        return min(self.skip_batches * self.batch_size, stop), stop

    def __iter__(self) -> Iterator[int]:
        start, stop = self._bounds()
        return iter(self.order(self.epoch)[start:stop].tolist())

    def __len__(self) -> int:
        start, stop = self._bounds()
        return stop - start

    def index_batches(self) -> Iterator[torch.Tensor]:
        """The epoch's batches of indices from the resume position on."""
        start, stop = self._bounds()
        order = self.order(self.epoch)[start:stop]
        return iter(order.split(self.batch_size)) if len(order) else iter(())

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "skip_batches": self.skip_batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.skip_batches = state["seed"], state["epoch"], state["skip_batches"]


class RankBatchSampler(ResumableSampler):
    """One rank's part of every *global* batch (a batch sampler: yields lists of indices).

    The global batches are those of a single process with batch ``batch_size x world_size``: the same
    order, a function of (seed, epoch) alone, whatever the world size. Rank r takes the r-th of
    ``world_size`` contiguous slices of each, so 1 process with batch 2B and 2 processes with batch B
    train on the same global batches. A short last global batch is split as evenly as possible (every
    rank must make the same number of steps); one with fewer samples than ranks is dropped, unless
    ``keep_short`` (validation under DDP: no sample left out; the ranks without one skip that batch).
    ``skip_batches`` counts global batches, which are also each rank's batches."""

    def __init__(self, length: int, *, batch_size: int, rank: int, world_size: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, keep_short: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        super().__init__(length, batch_size=batch_size * world_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.rank_batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.keep_short = keep_short

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.length, self.batch_size)
        least = 1 if self.keep_short else self.world_size
        return full + (1 if rest >= least and not self.drop_last else 0)

    def _slice(self, batch: torch.Tensor) -> torch.Tensor:
        base, extra = divmod(len(batch), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return batch[start:start + base + (1 if self.rank < extra else 0)]

    def index_batches(self) -> Iterator[torch.Tensor]:
        slices = (self._slice(b) for b in super().index_batches())
        return (s for s in slices if len(s))  # empty only for a kept short batch (keep_short)

    def __iter__(self) -> Iterator[list[int]]:  # type: ignore[override]
        return (b.tolist() for b in self.index_batches())

    def __len__(self) -> int:
        return max(self.batches_per_epoch() - self.skip_batches, 0)


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: numpy and python RNGs from the worker's torch seed (itself from seed, epoch, id)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


class TensorData(TensorDataset):
    """A TensorDataset that fetches a whole batch with one index operation per tensor.

    DataLoader calls ``__getitems__`` with the batch's indices when a dataset has it; indexing
    once instead of per sample and stacking removes most of the loader's cost for in-memory data.
    """

    def __getitems__(self, indices: list[int]) -> "Batched":
        index = torch.as_tensor(indices, dtype=torch.long)
        return Batched(tuple(t[index] for t in self.tensors))


class Batched:
    """A batch a dataset's ``__getitems__`` already assembled: ``collate`` passes ``value`` through."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def collate(batch: Sequence[Any]) -> Any:
    """Stack a list of samples: tensors, numbers, numpy arrays, dicts and tuples of them (nested)."""
    if isinstance(batch, Batched):
        return batch.value
    if not batch:
        raise ValueError("collate: empty batch")
    first = batch[0]
    if isinstance(first, torch.Tensor):
        try:
            return torch.stack(list(batch), out=_shared_out(batch))
        except RuntimeError:
            shapes = sorted({tuple(b.shape) for b in batch})
            if len(shapes) == 1:
                raise
        # torch.stack's own message does not say which shapes met
        raise ValueError(f"collate: samples have different shapes {shapes}; pad or crop them "
                         f"to one shape, or pass a collate_fn that does")
    if isinstance(first, np.ndarray):
        if get_worker_info() is not None and first.dtype.kind in "biuf":
            return collate([torch.from_numpy(np.asarray(b)) for b in batch])
        return torch.from_numpy(np.stack(batch))
    if isinstance(first, bool):
        return torch.tensor(batch, dtype=torch.bool)
    if isinstance(first, int):
        return torch.tensor(batch, dtype=torch.long)
    if isinstance(first, float):
        return torch.tensor(batch, dtype=torch.float32)
    if isinstance(first, np.generic):
        return torch.from_numpy(np.asarray(batch))
    if isinstance(first, cabc.Mapping):
        keys = first.keys()
        missing = [i for i, b in enumerate(batch) if b.keys() != keys]
        if missing:
            raise ValueError(f"collate: sample {missing[0]} has keys {sorted(batch[missing[0]])}, expected {sorted(first)}")
        return {k: collate([b[k] for b in batch]) for k in first}
    if isinstance(first, (tuple, list)) and any(len(b) != len(first) for b in batch):
        # zip would silently cut every sample to the shortest
        raise ValueError(f"collate: samples have different lengths {sorted({len(b) for b in batch})}")
    if isinstance(first, tuple) and hasattr(first, "_fields"):  # namedtuple
        return type(first)(*(collate(list(s)) for s in zip(*batch)))
    if isinstance(first, (tuple, list)):
        return type(first)(collate(list(s)) for s in zip(*batch)) if isinstance(first, tuple) else [collate(list(s)) for s in zip(*batch)]
    if isinstance(first, str):
        return list(batch)
    raise TypeError(f"collate: cannot batch samples of type {type(first).__name__}")


def _shared_out(batch: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """In a DataLoader worker, stack straight into shared memory: the batch then travels to the
    main process without another copy (as torch's default_collate does)."""
    first = batch[0]
    if get_worker_info() is None or first.layout != torch.strided:
        return None
    storage = first._typed_storage()._new_shared(first.numel() * len(batch), device=first.device)
    return first.new(storage).resize_(len(batch), *first.shape)


class HFData(Dataset):
    """A Hugging Face ``datasets.Dataset`` (numeric columns as torch tensors): a batch is one slice."""

    def __init__(self, table: Any):
        self.table = as_torch(table)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> Any:
        return self.table[index]

    def __getitems__(self, indices: list[int]) -> "Batched":
        return Batched(self.table[indices])  # a dict of stacked columns, fetched at once


def as_dataset(data: Any) -> Dataset | IterableDataset:
    """Accept a Dataset, a tensor, a tuple/list of equal-length tensors (inputs, targets, ...), or a
    Hugging Face ``datasets.Dataset``."""
    if isinstance(data, (Dataset, IterableDataset)):
        return data
    if is_hf_dataset(data):
        return HFData(data)
    if isinstance(data, torch.Tensor):
        return TensorData(data)
    if isinstance(data, np.ndarray):
        return TensorData(torch.from_numpy(data))
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data):
        tensors = [torch.as_tensor(t) for t in data]
        lengths = {len(t) for t in tensors}
        if len(lengths) != 1:
            raise ValueError(f"tensors must have the same first dimension, got lengths {[len(t) for t in tensors]}")
        return TensorData(*tensors)
    raise TypeError(
        f"cannot train on a {type(data).__name__}: pass a Dataset, a DataLoader, a tensor, a tuple of tensors, "
        "or a data spec {'path': ..., 'format': ...}"
    )


def make_loader(
    dataset: Any,
    cfg: Any = None,
    *,
    batch_size: int | None = None,
    shuffle: bool | None = None,
    seed: int | None = None,
    num_workers: int | None = None,
    drop_last: bool | None = None,
    pin_memory: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    keep_short: bool = False,
) -> DataLoader:
    """A DataLoader with a ResumableSampler (map-style data), seeded workers, and our collate.

    ``cfg`` (a TrainConfig) supplies defaults; keyword arguments override it. In a process group of
    several ranks (``rank``/``world_size`` default to it), ``batch_size`` is per rank and each rank
    reads its slice of every global batch (``RankBatchSampler``).
    """
    def pick(value: Any, name: str, default: Any) -> Any:
        if value is not None:
            return value
        return getattr(cfg, name, default) if cfg is not None else default

    dataset = as_dataset(dataset)
    batch_size = pick(batch_size, "batch_size", 32)
    num_workers = pick(num_workers, "num_workers", 0)
    seed = pick(seed, "seed", 0)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    generator = torch.Generator().manual_seed(epoch_seed(seed, 0, salt=1))
    common = dict(num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
                  worker_init_fn=seed_worker, generator=generator,
                  persistent_workers=False)
    if rank is None or world_size is None:
        from ..distributed.context import rank as _rank, world_size as _world
        rank, world_size = (_rank(), _world()) if _process_group() else (0, 1)
    if isinstance(dataset, IterableDataset):
        if world_size > 1 and getattr(dataset, "world_size", None) != world_size:
            # a trainforge stream deals records to ranks itself (streaming.py); another iterable cannot be split
            raise ValueError(f"this iterable dataset ({type(dataset).__name__}) does not split its records across the "
                             f"{world_size} ranks: under torchrun give a map-style dataset (an array, a token file, a "
                             "Dataset with __len__) or a trainforge stream (data spec with streaming), or run one process")
        if hasattr(dataset, "set_batch_size"):  # a stream deals whole batches to workers (streaming.py)
            dataset.set_batch_size(batch_size)
        return DataLoader(dataset, batch_size=batch_size, drop_last=pick(drop_last, "drop_last", False), **common)
    if world_size > 1:
        sampler = RankBatchSampler(len(dataset), batch_size=batch_size, rank=rank, world_size=world_size,
                                   shuffle=pick(shuffle, "shuffle", True), seed=seed,
                                   drop_last=pick(drop_last, "drop_last", False), keep_short=keep_short)
        if type(dataset) is TensorData and num_workers == 0 and not pin_memory:
            return TensorLoader(dataset, sampler, generator)
        return DataLoader(dataset, batch_sampler=sampler, **common)
    sampler = ResumableSampler(len(dataset), batch_size=batch_size, shuffle=pick(shuffle, "shuffle", True),
                               seed=seed, drop_last=pick(drop_last, "drop_last", False))
    if type(dataset) is TensorData and num_workers == 0 and not pin_memory:
        return TensorLoader(dataset, sampler, generator)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=sampler.drop_last, **common)


class TensorLoader:
    """In-memory tensors without workers: the same batches, in the same order, as the DataLoader
    (same ResumableSampler), but one slice and one index per tensor per batch — a DataLoader's
    fetch machinery costs as much as a tiny model's whole step."""

    def __init__(self, dataset: TensorData, sampler: ResumableSampler, generator: torch.Generator):
        self.dataset, self.sampler, self.generator = dataset, sampler, generator
        self.batch_size = getattr(sampler, "rank_batch_size", sampler.batch_size)
        self.num_workers, self.pin_memory = 0, False

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        tensors = self.dataset.tensors
        for index in self.sampler.index_batches():
            yield tuple(t[index] for t in tensors)

    def __len__(self) -> int:
        if isinstance(self.sampler, RankBatchSampler):
            return len(self.sampler)
        return math.ceil(len(self.sampler) / self.sampler.batch_size)


def prepare_epoch(loader: "DataLoader | TensorLoader", seed: int, epoch: int, skip_batches: int = 0) -> bool:
    """Position ``loader`` at (epoch, skip_batches). Returns False when it cannot skip by index
    (a plain sampler or an iterable dataset): the caller then skips by iterating."""
    if loader.generator is not None:
        loader.generator.manual_seed(epoch_seed(seed, epoch, salt=1))
    dataset = loader.dataset
    if hasattr(dataset, "set_epoch"):  # map-style too: random token windows are drawn per epoch
        dataset.set_epoch(epoch)
    sampler = loader.batch_sampler if isinstance(getattr(loader, "batch_sampler", None), RankBatchSampler) \
        else loader.sampler
    if isinstance(sampler, ResumableSampler):
        sampler.set_epoch(epoch, skip_batches)
        return True
    if hasattr(dataset, "set_batch_size") and loader.batch_size:
        dataset.set_batch_size(loader.batch_size)
    if skip_batches and hasattr(dataset, "skip_batches"):
        dataset.skip_batches(skip_batches)
        return True
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return skip_batches == 0


def split(dataset: Any, val_fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    """Deterministic train/validation split: the same (dataset length, fraction, seed) gives the same split."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    dataset = as_dataset(dataset)
    if isinstance(dataset, IterableDataset):
        raise ValueError("split needs a map-style dataset (with a length); for a stream give a separate validation file")
    n = len(dataset)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} leaves no training data out of {n} samples")
    g = torch.Generator().manual_seed(epoch_seed(seed, 0, salt=2))
    perm = torch.randperm(n, generator=g).tolist()
    return Subset(dataset, sorted(perm[n_val:])), Subset(dataset, sorted(perm[:n_val]))


def loader_for(data: Any, cfg: Any, *, train: bool) -> "DataLoader | TensorLoader":
    """The loader a run uses for ``data``: a given DataLoader as it is; anything else through
    ``make_loader`` (validation: in order, its own batch size, no workers)."""
    if isinstance(data, (DataLoader, TensorLoader)):
        _check_split(data)
        return data
    if train:
        return make_loader(data, cfg)
    bs = cfg.validation.batch_size or cfg.batch_size
    # several ranks: every validation sample is evaluated once, a short last batch included (DDP); FSDP
    # needs every rank in every forward, so there a last batch with fewer samples than ranks is dropped
    keep_short = getattr(getattr(cfg, "distributed", None), "strategy", "ddp") != "fsdp"
    return make_loader(data, cfg, batch_size=bs, shuffle=False, drop_last=False, num_workers=0, keep_short=keep_short)


def epoch_iterator(loader: "DataLoader | TensorLoader", seed: int, epoch: int, skip: int) -> Iterator[Any]:
    """Batches of ``epoch`` from batch ``skip`` on: skipped by index where the loader can,
    otherwise by iterating past them (a plain DataLoader: slow, but exact)."""
    if prepare_epoch(loader, seed, epoch, skip):
        return iter(loader)
    if skip:
        warnings.warn(f"resuming mid-epoch with a plain DataLoader: iterating past {skip} batches; "
                      "pass a Dataset (or use trainforge.data.make_loader) to skip by index", stacklevel=3)
    it = iter(loader)
    for _ in range(skip):
        next(it, None)
    return it


def _process_group() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def _check_split(loader: Any) -> None:
    """A loader the user built is taken as it is; under several ranks it must split the data itself."""
    if not _process_group():
        return
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler
    split_ = (isinstance(getattr(loader, "batch_sampler", None), RankBatchSampler)
              or isinstance(getattr(loader, "sampler", None), (RankBatchSampler, DistributedSampler)))
    if dist.get_world_size() > 1 and not split_:
        raise ValueError("under torchrun every rank would read the whole of this DataLoader: pass the Dataset "
                         "(trainforge splits every global batch across ranks), or give the loader a DistributedSampler")
