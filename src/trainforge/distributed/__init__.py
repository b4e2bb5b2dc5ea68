"""Distributed training on torch.distributed, launched by torchrun (see docs/distributed.md).

``context``: torchrun's environment -> the process group, rank info, agreement between ranks;
``wrap``: DDP / FSDP2; ``attach``: the trainer's hooks; ``sampling`` is in ``data/loader.py`` (each
rank's slice of every global batch); ``reduce``: evaluation sums over ranks; ``launch``:
``trainforge train --nproc N`` as a torchrun subprocess, exit codes carried back.
"""

from .attach import DistributedRun, attach
from .context import DistContext, is_main, launched_by_torchrun, rank, world_size

__all__ = ["DistContext", "DistributedRun", "attach", "is_main", "launched_by_torchrun", "rank", "world_size"]
