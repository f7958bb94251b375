"""The ``cpu`` backend: the host processor, always present.

The CPU has no device-side state to manage: work is synchronous, there is no cache to empty,
and its random generator is the default torch generator, which the core checkpoints itself.
So every optional ``Backend`` method keeps its no-op default, and batches need no move: a
host tensor already lives where the model is (``places_batches = False``).
"""

from __future__ import annotations

import torch

from treadle.components import Backend


class CpuBackend(Backend):
    """Train on the host CPU (the fallback that ``--backend auto`` always finds)."""

    name = "cpu"
    places_batches = False

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def device_count(cls) -> int:
        # Several CPU processes (e.g. ddp with gloo) share one device: there is one CPU device.
        return 1

    def setup_device(self, local_rank: int) -> torch.device:
        return torch.device("cpu")
