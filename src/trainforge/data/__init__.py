"""Data: readers, streaming, cache, token windows, and reproducible, resumable loaders."""

from .loader import ResumableSampler, as_dataset, collate, epoch_seed, make_loader, prepare_epoch, seed_worker, split

__all__ = ["ResumableSampler", "as_dataset", "collate", "epoch_seed", "make_loader", "prepare_epoch", "seed_worker", "split"]
