"""``MpsBackend``: train on the GPU of an Apple-silicon Mac through Metal Performance Shaders.

Caveats that shape it: one process only (no collective backend runs on MPS); some operators
have no MPS kernel, and ``PYTORCH_ENABLE_MPS_FALLBACK=1`` lets those run on the CPU instead of
failing (slower; torch warns once per operator); unified memory, so pinning host memory brings
nothing and is off. The MPS generator goes into checkpoints, and ``memory_stats`` reports what
tensors hold (MPS keeps no peak).
"""

from __future__ import annotations

import logging
import os
import platform
from typing import Any, Optional

import torch

from treadle.components import Backend
from treadle.errors import UsageError

logger = logging.getLogger("treadle.mps")
FALLBACK_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"


class MpsBackend(Backend):
    """The one MPS device of this Mac."""

    name = "mps"
    n_gpu = 1

    @classmethod
    def unavailable_reason(cls) -> Optional[str]:
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_built():
            return f"this torch ({torch.__version__}) is built without MPS"
        if not mps.is_available():
            return f"no MPS device (needs macOS 12.3+ on Apple silicon; this is {platform.system()} {platform.machine()})"
        return None

    @classmethod
    def is_available(cls) -> bool:
        return cls.unavailable_reason() is None

    def setup_device(self, local_rank: int) -> torch.device:
        reason = self.unavailable_reason()
        if reason:
            raise UsageError(f"--backend mps: {reason}. Use --backend cpu (or auto) on this machine")
        if local_rank > 0:
            raise UsageError("--backend mps runs in one process only; start a single process")
        if os.environ.get(FALLBACK_ENV) != "1":
            logger.debug("%s is not 1: an operator without an MPS kernel raises instead of running on the CPU", FALLBACK_ENV)
        return torch.device("mps")

    def synchronize(self) -> None:
        torch.mps.synchronize()

    def empty_cache(self) -> None:
        torch.mps.empty_cache()

    def memory_stats(self) -> dict[str, int]:
        return {"allocated": torch.mps.current_allocated_memory()}

    def rng_state(self) -> dict[str, torch.Tensor]:
        return {"mps": torch.mps.get_rng_state()}

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        if "mps" in state:
            torch.mps.set_rng_state(state["mps"])


def environment_lines() -> list[tuple[str, str]]:
    reason = MpsBackend.unavailable_reason()
    lines: list[tuple[str, Any]] = [("mps device", "available" if reason is None else f"none: {reason}")]
    lines.append((FALLBACK_ENV, os.environ.get(FALLBACK_ENV, "(unset: an operator without an MPS kernel raises)")))
    return lines
