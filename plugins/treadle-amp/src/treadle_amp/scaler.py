"""A ``torch.amp.GradScaler`` that decides about overflows together with the other processes.

Under a sharding strategy each process unscales only its part of the gradients, so only the
process holding an inf would skip the step and lower its scale. The strategy hands the
precision a reducer (``Precision.agree_on_overflow``); this scaler passes its found-inf flags
through it right after unscaling, so ``step`` (skip or not) and ``update`` (the new scale) read
the same flags on every process.

torch reduces the flag for DTensor gradients by itself, but only over the mesh of the first
gradient in each batch of gradients it unscales: with FSDP2 alone that is every process, with
tensor parallel it can be a data-only parameter's mesh that leaves out the other tp ranks (then
rank 0 would step while rank 1 skipped; tests/plugins/fsdp/test_fp16.py shows it). The reducer
covers every process whatever the gradients are, for one small collective per step.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch


class AgreeingGradScaler(torch.amp.GradScaler):
    """GradScaler whose found-inf flags are the maximum over processes once ``reduce_max`` is set."""

    def __init__(self, device: str, *, reduce_max: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, **options) -> None:
        super().__init__(device, **options)
        self.reduce_max = reduce_max

    # GradScaler routes every unscaling through this method (an explicit unscale_, the one inside
    # step, and the fused optimizers' check), so overriding it covers them all.
    def _unscale_grads_(
        self, optimizer: torch.optim.Optimizer, inv_scale: torch.Tensor, found_inf: torch.Tensor, allow_fp16: bool
    ) -> dict[torch.device, torch.Tensor]:
        per_device = super()._unscale_grads_(optimizer, inv_scale, found_inf, allow_fp16)
        if self.reduce_max is None:
            return per_device
        if not per_device:  # no gradient here: still take part in the collective, and learn the verdict
            per_device[found_inf.device] = found_inf
        flags = list(per_device.values())
        local = torch.stack([flag.reshape(()).to(found_inf.device) for flag in flags]).amax().reshape(1)
        agreed = self.reduce_max(local)
        for flag in flags:
            flag.copy_(agreed.to(flag.device).reshape(flag.shape))
        return per_device
