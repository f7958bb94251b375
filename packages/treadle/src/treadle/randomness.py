"""Seeding: ``seed`` for the model's randomness, ``full_determinism`` for bitwise-repeatable kernels.

The data order never draws from these global generators (the samplers own theirs, see
``treadle.data``), so changing ``data_seed`` changes the order without changing dropout, and a
checkpoint's saved global RNG state is all a resume needs for the model side.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (torch seeds every device too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def enable_full_determinism(seed: int) -> None:
    """``set_seed`` plus deterministic kernels: slower, but repeatable bit for bit."""
    set_seed(seed)
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
    os.environ["FLASH_ATTENTION_DETERMINISTIC"] = "1"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def seed_from_args(args: object, backend: object = None) -> None:
    """Seed from ``args.seed`` (deterministic kernels with ``full_determinism``), and the backend's
    own device generator when one is given (``Backend.manual_seed``)."""
    if getattr(args, "full_determinism", False):
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)
    if backend is not None:
        backend.manual_seed(args.seed)
