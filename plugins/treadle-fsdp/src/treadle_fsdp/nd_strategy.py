"""The ``fsdp`` strategy with ``parallelism_config``: FSDP2 over the data dimensions of an N-D mesh,
tensor parallel and context parallel over others.

Without ``parallelism_config`` this is exactly ``FsdpStrategy``. With it, the processes form a
``(dp_replicate, dp_shard, cp, tp)`` mesh (``parallelism.Layout``); the model is first split by
its tensor-parallel plan over ``tp`` (``tensor_parallel``), then ``fully_shard`` shards what
each tp rank holds over ``dp_shard x cp`` flattened (replicated over ``dp_replicate``: HSDP), so
every parameter ends as a DTensor on the data mesh or on the data x tp mesh. The cp ranks hold
parameter shards like data-parallel ranks do (their gradients, from different slices of the
same sequences, are averaged together with the replicas': torchtitan's ``dp_shard_cp``), and
each training micro-batch is split along the sequence over ``cp`` (``context_parallel``).

What a data-parallel run does differently here:

* data: ranks of one tp x cp block must see the same batch, so ``shard_info`` is the
  data-parallel (replicas, index), and ``get_total_train_batch_size`` counts only data-parallel
  replicas;
* gradient norm: parameters live on two meshes (tp-split ones on dp x tp, the rest on dp), so
  the norm is taken per mesh and summed in squares, then clipped with one global factor;
* evaluation: predictions are gathered over the data-parallel group only (each tp x cp block
  holds one copy of its batch's predictions, which the world-wide gather would count tp x cp
  times); evaluation and prediction compute whole sequences on every cp rank;
* checkpoints are the parent's DCP shards (DTensors of any mesh), so a 2 x 2 run resumes on its
  own mesh exactly and reshards onto another, including one process.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from treadle import parallelism
from treadle.errors import UsageError

from treadle_fsdp import context_parallel, tensor_parallel
from treadle_fsdp.options import OFFERED, SP_HINT, handler_problems
from treadle_fsdp.strategy import FsdpStrategy, _full


class NdFsdpStrategy(FsdpStrategy):
    """FSDP2 composed with tensor and context parallel on a DeviceMesh chosen by ``parallelism_config``."""

    def __init__(self, args: Any, backend: Any, precision: Any) -> None:
        super().__init__(args, backend, precision)
        self.layout: parallelism.Layout | None = parallelism.strategy_layout(args, OFFERED, "fsdp", SP_HINT)
        self.device_mesh: Any = None
        self.evaluation_group: Any = None  # the data-parallel group when tp x cp > 1
        self._cp_mesh: Any = None
        problems = handler_problems(self.layout.extra) if self.layout else []
        if problems:
            raise UsageError("\n".join(problems))
        handler = self.layout.extra.get("cp_handler") if self.layout else None
        self._rotate = context_parallel.rotate_method(handler)

    # sizes (read by Trainer.get_tp_size / get_cp_size / get_sp_size) -------------------------
    @property
    def tp_size(self) -> int:
        return self.layout.tp if self.layout else 1

    @property
    def cp_size(self) -> int:
        return self.layout.cp if self.layout else 1

    @property
    def sp_size(self) -> int:
        return self.layout.sp if self.layout else 1

    def _resolved(self) -> parallelism.Layout:
        assert self.layout is not None
        self.layout = parallelism.resolved(self.layout, self.world_size)
        return self.layout

    # mesh ------------------------------------------------------------------------------------
    def _build_mesh(self) -> Any:
        """The N-D mesh; returns its data-parallel part, the mesh ``fully_shard`` shards over."""
        if self.layout is None:
            return super()._build_mesh()
        from torch.distributed.device_mesh import init_device_mesh

        layout = self._resolved()
        if self.settings.mode not in ("full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2"):
            raise UsageError(f"parallelism_config: --fsdp {self.settings.mode} cannot be combined with an N-D mesh; "
                             "use full_shard (set dp_shard_size=1 to replicate)")
        mesh = init_device_mesh(self.root_device.type, layout.shape(), mesh_dim_names=parallelism.MESH_DIMS)
        self.device_mesh = mesh
        data = mesh["dp_replicate", "dp_shard"]
        self.evaluation_group = data._flatten("dp").get_group() if layout.tp * layout.cp > 1 else None
        if layout.cp == 1:
            return data if layout.dp_replicate > 1 else mesh["dp_shard"]
        # parameters shard over the data and cp ranks together (each cp rank holds a shard, its gradient
        # from its slice of the sequences is averaged with the others')
        self._cp_mesh = mesh["cp"]
        shard_cp = mesh["dp_shard", "cp"]._flatten("dp_shard_cp")
        if layout.dp_replicate == 1:
            return shard_cp
        from torch.distributed.device_mesh import DeviceMesh

        return DeviceMesh._concatenate([mesh["dp_replicate"], shard_cp])  # HSDP: replicate x (dp_shard x cp)

    def shard_info(self) -> tuple[int, int]:
        """(data-parallel replicas, this process's index): a tp x cp block shares its batches."""
        if self.layout is None:
            return super().shard_info()
        layout = self._resolved()
        return layout.dp_size, layout.dp_rank(self.global_rank)

    # model -----------------------------------------------------------------------------------
    def _split_before_sharding(self, model: torch.nn.Module) -> None:
        """Split the model by its tensor-parallel plan; the parent then shards it over the data mesh.

        The parent has synced the plain tensors already (one broadcast each), or, with
        ``cpu_ram_efficient_loading``, emptied every rank's parameters: the split then only lays
        out meta DTensors, and rank 0's full weights fill the dp x tp shards after sharding."""
        if self.layout is not None and self.layout.tp > 1:
            tensor_parallel.apply(model, self.device_mesh["tp"], self.layout.tp_plan)

    # context parallel ------------------------------------------------------------------------
    def micro_batch(self, inputs: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
        """cp > 1: this rank's slice of each sequence, with torch's ring attention active over forward and
        backward (the rules: ``context_parallel``)."""
        if self._cp_mesh is None:
            return super().micro_batch(inputs)
        return context_parallel.split(inputs, self._require_model(), self._cp_mesh, self._rotate)

    # gradients -------------------------------------------------------------------------------
    def grad_norm(self, model: torch.nn.Module) -> torch.Tensor | None:
        """The global gradient norm, taken per mesh (tp-split and data-only parameters differ)."""
        if self.layout is None:
            return super().grad_norm(model)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return None
        groups: dict[Any, list[torch.Tensor]] = {}
        for grad in grads:
            mesh = getattr(grad, "device_mesh", None)
            key = (id(mesh), tuple(getattr(grad, "placements", ())))
            groups.setdefault(key, []).append(grad)
        squares = [_full(torch.nn.utils.get_total_norm(group)).float() ** 2 for group in groups.values()]
        return torch.stack(squares).sum().sqrt()

    def clip_grad_norm(self, model: torch.nn.Module, optimizer: Any, max_norm: float) -> torch.Tensor:
        if self.layout is None:
            return super().clip_grad_norm(model, optimizer, max_norm)
        self.precision.unscale_gradients(optimizer)
        norm = self.grad_norm(model)
        if norm is None:
            return torch.tensor(0.0)
        factor = min(float(max_norm) / (float(norm) + 1e-6), 1.0)
        if factor < 1.0:
            with torch.no_grad():
                for param in model.parameters():
                    if param.grad is not None:
                        param.grad.mul_(factor)
        return norm

    def teardown(self) -> None:
        self.device_mesh = None
        self.evaluation_group = None
        self._cp_mesh = None
        super().teardown()


__all__ = ["NdFsdpStrategy"]
