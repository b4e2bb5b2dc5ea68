"""Data: readers, streaming, cache and filter, token windows, data specs, and reproducible, resumable loaders."""

from .cache import CachedDataset, FilteredDataset
from .loader import ResumableSampler, as_dataset, collate, epoch_seed, make_loader, prepare_epoch, seed_worker, split
from .errors import DataError
from .readers import load_dataset
from .spec import build_data
from .streaming import JsonlStream, StreamingDataset, TokenStream, stream_dataset
from .tokens import TokenWindowDataset

__all__ = [
    "CachedDataset", "DataError", "FilteredDataset", "JsonlStream", "ResumableSampler", "StreamingDataset",
    "TokenStream", "TokenWindowDataset", "as_dataset", "build_data", "collate", "epoch_seed", "load_dataset",
    "make_loader", "prepare_epoch", "seed_worker", "split", "stream_dataset",
]
