import os

import pytest
import torch

# Tests are CPU-only, deterministic and small; one thread keeps them fast and reproducible on 2 cores.
torch.set_num_threads(1)
os.environ.setdefault("TQDM_DISABLE", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
