"""A strategy base for one process per device over torch.distributed (ddp, fsdp, deepspeed, ...).

Every such strategy needs the same things: the topology a launcher put in the environment
(RANK, WORLD_SIZE, LOCAL_RANK, or ``--local_rank`` from the deepspeed launcher), a process
group joined with ``env://`` (or adopted when the caller, or ``args.main_process_first`` in a
task, started one), the loop's collectives on it, and the group destroyed at teardown when
treadle started it. A plugin subclasses ``ProcessGroupStrategy`` and adds what is its own
(model wrapping, sharded checkpoints), instead of writing these again.

Imported only by strategy implementations (it imports torch.distributed), never at start-up.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from treadle.components import Strategy
from treadle.errors import UsageError

REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "mean": dist.ReduceOp.SUM}



def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.lstrip("-").isdigit() else default


class ProcessGroupStrategy(Strategy):
    """Topology, process group and collectives of a strategy with one process per device."""

    evaluation_group: Any = None
    """The process group ``evaluation_gather`` spans: None for every process; a strategy whose
    blocks of processes share each batch (tp / cp / sp) sets its data-parallel group here."""

    def __init__(self, args: Any, backend: Any, precision: Any) -> None:
        super().__init__(args, backend, precision)
        self._owns_group = False
        self._world_size = max(1, env_int("WORLD_SIZE", 1))
        self._rank = env_int("RANK", 0)
        if "LOCAL_RANK" in os.environ:
            self._local_rank = env_int("LOCAL_RANK", 0)
        else:  # the deepspeed launcher may pass --local_rank instead
            self._local_rank = max(getattr(args, "local_rank", -1), 0)

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

    def process_group_backend(self) -> str:
        """``--ddp_backend``, else the backend's choice (``Backend.distributed_backend``: nccl for
        CUDA), else gloo, which every device can fall back on."""
        return self.args.ddp_backend or self.backend.distributed_backend or "gloo"

    def setup_environment(self) -> None:
        """Pick the device, then join the process group (or adopt one that is already there)."""
        if self.root_device is None:
            self.root_device = self.backend.setup_device(self.local_rank)
        if dist.is_initialized():
            # started by this strategy already (a second call: model_init_context may join early),
            # by the caller, or by args.main_process_first in the task
            self._owns_group = self._owns_group or bool(vars(self.args).get("process_group_started_by_treadle"))
        else:
            self._init_process_group()
            self._owns_group = True
        self._world_size, self._rank = dist.get_world_size(), dist.get_rank()

    def _init_process_group(self) -> None:
        backend = self.process_group_backend()
        timeout = datetime.timedelta(seconds=self.args.ddp_timeout or 1800)
        if self._world_size == 1 and not os.environ.get("MASTER_ADDR"):
            # one process chose this strategy without a launcher: a group of one needs no rendezvous
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
            return
        try:
            dist.init_process_group(backend, init_method="env://", rank=self._rank, world_size=self._world_size, timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            raise UsageError(
                f"strategy {self.name}: rank {self._rank} of {self._world_size} could not join the process group "
                f"(backend {backend}, MASTER_ADDR={os.environ.get('MASTER_ADDR')}, "
                f"MASTER_PORT={os.environ.get('MASTER_PORT')}): {exc}. Start the processes with torchrun "
                "(or treadle train --nproc_per_node N), which sets these"
            ) from exc

    # collectives -----------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        if op not in REDUCE_OPS:
            raise ValueError(f"all_reduce op {op!r}: expected one of {', '.join(REDUCE_OPS)}")
        result = tensor.detach().clone()
        if op == "mean" and not result.is_floating_point():
            result = result.double()
        if self._world_size > 1:
            dist.all_reduce(result, op=REDUCE_OPS[op])
        return result / self._world_size if op == "mean" else result

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equally shaped tensors along dim 0 (``treadle.evaluation`` pads uneven ones first)."""
        tensor = tensor.detach().contiguous()
        if tensor.dim() == 0:
            tensor = tensor.reshape(1)
        if self._world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self._world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self._world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def evaluation_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        group = self.evaluation_group
        if group is None:
            return self.all_gather(tensor)
        tensor = tensor.detach().contiguous()
        if tensor.dim() == 0:
            tensor = tensor.reshape(1)
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor, group=group)
        return torch.cat(parts)

    def evaluation_gather_object(self, obj: Any) -> list[Any]:
        group = self.evaluation_group
        if group is None:
            return self.all_gather_object(obj)
        gathered: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, obj, group=group)
        return gathered

    def barrier(self, name: str = "") -> None:
        if self._world_size > 1 and dist.is_initialized():
            dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if self._world_size == 1:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """True when every rank (``all``) or any rank decided True: all ranks then act alike."""
        if self._world_size == 1:
            return bool(decision)
        votes = torch.tensor([int(bool(decision))], device=self.collective_device())
        dist.all_reduce(votes, op=dist.ReduceOp.SUM)
        count = int(votes.item())
        return count == self._world_size if all else count > 0

    def collective_device(self) -> torch.device:
        """Where a small tensor must live for the group's backend (gloo: the host; nccl: the GPU)."""
        if dist.is_initialized() and dist.get_backend() == "gloo":
            return torch.device("cpu")
        return self.root_device or torch.device("cpu")

    # teardown --------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Destroy the process group if treadle started it (a caller's group is the caller's), then the backend."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False
        super().teardown()


__all__ = ["ProcessGroupStrategy", "REDUCE_OPS", "env_int"]
