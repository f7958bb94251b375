"""The ``cpu`` backend: the host processor, always present.

The CPU has no device-side state to manage: work is synchronous, there is no cache to empty,
and its random generator is the default torch generator, which the core checkpoints itself.
So every optional ``Backend`` method keeps its no-op default, and batches need no move: a
host tensor already lives where the model is (``places_batches = False``).

Threads: torch starts one intra-op thread per core, and its workers spin while they wait. When
other work wants the same cores (the Python loop itself, data loading, other processes, other
jobs on a shared machine) that spinning makes every step many times slower: on 2 busy cores the
demo task took 7-20 s for 60 steps with 2 threads and about 1 s with 1. So the backend uses the
cores this process may run on (its CPU affinity) divided by the processes started on this node
(``LOCAL_WORLD_SIZE``), less one core left for the Python loop and the loaders, at least 1. It
only ever lowers torch's count, and ``OMP_NUM_THREADS`` (set by the user, or by ``torchrun``
for several processes) always wins. ``treadle env`` shows the choice.
"""

from __future__ import annotations

import os

import torch

from treadle.components import Backend


def default_threads() -> tuple[int, str]:
    """``(intra-op threads, why)`` the cpu backend trains with in this process."""
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads(), f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform (macOS)
        cores = os.cpu_count() or 1
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    chosen = max(1, cores // processes - 1)
    return min(chosen, torch.get_num_threads()), (
        f"{cores} usable core(s) / {processes} process(es) on this node, less one for the loop; "
        "OMP_NUM_THREADS overrides"
    )


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
        threads, _ = default_threads()
        if threads < torch.get_num_threads():
            torch.set_num_threads(threads)
        return torch.device("cpu")
