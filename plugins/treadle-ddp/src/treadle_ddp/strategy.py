"""The ``ddp`` strategy: one replica of the model per process, gradients averaged by DDP.

Processes are started by a launcher (torchrun, ``treadle train --nproc_per_node``, accelerate,
the deepspeed launcher), which sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR. The core's
``ProcessGroupStrategy`` joins them in a process group and provides the collectives; this module
wraps the model in ``DistributedDataParallel`` with the ``ddp_*`` options and keeps gradients
local on accumulation micro-batches. Because DDP averages gradients during backward, every rank
ends each step with the same weights, so the strategy has no state of its own in checkpoints:
rank 0 writes the full weights, as with one process.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from treadle.components import NoSyncCapable
from treadle.distributed import ProcessGroupStrategy
from treadle.errors import UsageError

_NO_FORWARD_BUFFER_SYNC = (
    "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else "broadcast_buffers"
)
"""How this torch spells "do not broadcast buffers before each forward" (renamed in torch 2.13)."""


class DDPStrategy(ProcessGroupStrategy, NoSyncCapable):
    """DistributedDataParallel over the processes a launcher started (one device each)."""

    name = "ddp"

    def setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The device, then the DDP wrapper with the ``ddp_*`` options (the loop has already applied
        the precision's ``convert_module``)."""
        if self.root_device is None:
            self.setup_environment()
        model = model.to(self.root_device)
        if not any(p.requires_grad for p in model.parameters()):
            raise UsageError("strategy ddp: the model has no trainable parameter (all have requires_grad=False)")
        return DistributedDataParallel(model, **self.wrapper_options())

    def wrapper_options(self) -> dict[str, Any]:
        """DDP's keyword arguments from ``ddp_find_unused_parameters`` / ``ddp_bucket_cap_mb`` /
        ``ddp_broadcast_buffers`` (the unset ones: true unless gradient checkpointing is on)."""
        args = self.args
        checkpointing = bool(args.gradient_checkpointing)
        find_unused = args.ddp_find_unused_parameters
        broadcast = args.ddp_broadcast_buffers
        options: dict[str, Any] = {"find_unused_parameters": not checkpointing if find_unused is None else bool(find_unused)}
        if not (not checkpointing if broadcast is None else broadcast):
            options[_NO_FORWARD_BUFFER_SYNC] = False
        if args.ddp_bucket_cap_mb is not None:
            options["bucket_cap_mb"] = args.ddp_bucket_cap_mb
        if self.root_device.type not in ("cpu", "meta"):
            options["device_ids"] = [self.root_device]
        return options

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        inner = getattr(model, "_orig_mod", model)  # torch.compile around the wrapper
        return inner.module if isinstance(inner, DistributedDataParallel) else inner

    def no_backward_sync(self, model: torch.nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Accumulation micro-batches before the last: gradients stay local (one all-reduce per step)."""
        inner = getattr(model, "_orig_mod", model)
        if enabled and isinstance(inner, DistributedDataParallel):
            return inner.no_sync()
        return contextlib.nullcontext()


__all__ = ["DDPStrategy"]
