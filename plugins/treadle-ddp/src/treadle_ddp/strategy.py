"""The ``ddp`` strategy: one replica of the model per process, gradients averaged by DDP.

Processes are started by a launcher (torchrun, ``treadle train --nproc_per_node``, accelerate,
the deepspeed launcher), which sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; this module
joins them in a process group (``env://``), wraps the model in ``DistributedDataParallel`` with
the ``ddp_*`` options, and gives the loop its collectives. Because DDP averages gradients
during backward, every rank ends each step with the same gradients and the same weights, so the
strategy needs no state of its own in checkpoints: rank 0 writes the full weights, as with one
process.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from treadle.components import NoSyncCapable, Strategy
from treadle.errors import UsageError

_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "mean": dist.ReduceOp.SUM}

_DEFAULT_BACKEND = {"cuda": "nccl", "xpu": "xccl", "hpu": "hccl"}
"""Collective backend for a device type; anything else (cpu, mps) talks over gloo."""


_NO_FORWARD_BUFFER_SYNC = (
    "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else "broadcast_buffers"
)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip().lstrip("-").isdigit() else default


class DDPStrategy(Strategy, NoSyncCapable):
    """DistributedDataParallel over the processes a launcher started (one device each)."""

    name = "ddp"

    def __init__(self, args: Any, backend: Any, precision: Any) -> None:
        super().__init__(args, backend, precision)
        self._owns_group = False
        self._world_size = max(1, _env_int("WORLD_SIZE", 1))
        self._rank = _env_int("RANK", 0)
        local = os.environ.get("LOCAL_RANK")
        self._local_rank = _env_int("LOCAL_RANK", 0) if local is not None else max(getattr(args, "local_rank", -1), 0)

    # process topology ------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def global_rank(self) -> int:
        return self._rank

    @property
    def local_rank(self) -> int:
        return self._local_rank

    def setup_environment(self) -> None:
        """Pick the device, then join the process group (or reuse one the caller started)."""
        if self.root_device is None:
            self.root_device = self.backend.setup_device(self.local_rank)
        if dist.is_initialized():  # started by the caller, or by args.main_process_first in the task
            self._owns_group = bool(vars(self.args).get("process_group_started_by_treadle"))
            self._world_size, self._rank = dist.get_world_size(), dist.get_rank()
            return
        backend = self.args.ddp_backend or _DEFAULT_BACKEND.get(self.root_device.type, "gloo")
        timeout = datetime.timedelta(seconds=self.args.ddp_timeout or 1800)
        if self._world_size == 1 and not os.environ.get("MASTER_ADDR"):
            # one process asked for ddp without a launcher: a group of one needs no rendezvous
            store = dist.HashStore()
            dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
        else:
            try:
                dist.init_process_group(
                    backend, init_method="env://", rank=self._rank, world_size=self._world_size, timeout=timeout
                )
            except (RuntimeError, ValueError) as exc:
                raise UsageError(
                    f"strategy ddp: rank {self._rank} of {self._world_size} could not join the process group "
                    f"(backend {backend}, MASTER_ADDR={os.environ.get('MASTER_ADDR')}, "
                    f"MASTER_PORT={os.environ.get('MASTER_PORT')}): {exc}"
                ) from exc
        self._owns_group = True
        self._world_size, self._rank = dist.get_world_size(), dist.get_rank()

    # model -----------------------------------------------------------------------------------
    def setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The device, then the DDP wrapper with the ``ddp_*`` options (the loop has already applied
        the precision's ``convert_module``)."""
        if self.root_device is None:
            self.setup_environment()
        model = model.to(self.root_device)
        if not any(p.requires_grad for p in model.parameters()):
            raise UsageError("strategy ddp: the model has no trainable parameter (all have requires_grad=False)")
        args = self.args
        checkpointing = bool(args.gradient_checkpointing)
        find_unused = args.ddp_find_unused_parameters
        if find_unused is None:
            find_unused = not checkpointing
        broadcast = args.ddp_broadcast_buffers
        if broadcast is None:
            broadcast = not checkpointing
        options: dict[str, Any] = {"find_unused_parameters": bool(find_unused)}
        if not broadcast:  # DDP's default broadcasts; newer torch spells "not before each forward" differently
            options[_NO_FORWARD_BUFFER_SYNC] = False
        if args.ddp_bucket_cap_mb is not None:
            options["bucket_cap_mb"] = args.ddp_bucket_cap_mb
        if self.root_device.type not in ("cpu", "meta"):
            options["device_ids"] = [self.root_device]
        return DistributedDataParallel(model, **options)

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        inner = getattr(model, "_orig_mod", model)  # torch.compile around the wrapper
        return inner.module if isinstance(inner, DistributedDataParallel) else inner

    def no_backward_sync(self, model: torch.nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Accumulation micro-batches before the last: gradients stay local (one all-reduce per step)."""
        inner = getattr(model, "_orig_mod", model)
        if enabled and isinstance(inner, DistributedDataParallel):
            return inner.no_sync()
        return contextlib.nullcontext()

    # collectives -----------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        if op not in _REDUCE_OPS:
            raise ValueError(f"all_reduce op {op!r}: expected one of {', '.join(_REDUCE_OPS)}")
        result = tensor.detach().clone()
        if not result.is_floating_point() and op == "mean":
            result = result.double()
        dist.all_reduce(result, op=_REDUCE_OPS[op])
        return result / self._world_size if op == "mean" else result

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equally shaped tensors along dim 0 (``treadle.evaluation`` pads uneven ones first)."""
        tensor = tensor.detach().contiguous()
        if tensor.dim() == 0:
            tensor = tensor.reshape(1)
        parts = [torch.empty_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    def all_gather_object(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self._world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self, name: str = "") -> None:
        if dist.is_initialized():
            dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """True when every rank (``all``) or any rank decided True: all ranks then act alike."""
        if self._world_size == 1:
            return bool(decision)
        votes = torch.tensor([int(bool(decision))], device=self._collective_device())
        dist.all_reduce(votes, op=dist.ReduceOp.SUM)
        count = int(votes.item())
        return count == self._world_size if all else count > 0

    def _collective_device(self) -> torch.device:
        """Where a small tensor must live for the group's backend (nccl: the GPU; gloo: the host)."""
        if dist.is_initialized() and dist.get_backend() == "gloo":
            return torch.device("cpu")
        return self.root_device or torch.device("cpu")

    # teardown --------------------------------------------------------------------------------
    def teardown(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False
        super().teardown()


__all__ = ["DDPStrategy"]
