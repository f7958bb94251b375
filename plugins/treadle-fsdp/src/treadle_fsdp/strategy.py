"""The ``fsdp`` strategy: FSDP2 (``fully_shard``) on a device mesh over the launched processes.

Processes come from a launcher (torchrun, ``treadle train --nproc_per_node``), which sets
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; the strategy joins them in a process group and
lays them out on a mesh chosen by the sharding mode (``options.SHARDING_MODES``). It shards the
model before the optimizer exists (``wraps_model_first``), so the optimizer holds the sharded
parameters and its state is sharded with them.

What differs from one process: the gradient norm is a global norm over the shards; the model
weights for ``model.safetensors`` are gathered to rank 0 (``model_state_dict``); checkpoints hold
one DCP shard per process (``sharded_checkpoint``); the mixed-precision policy comes from the
run's precision through ``Precision.compute_dtype`` (``precision_dtype``), and a loss scaler
decides about overflows over every process's shard through ``Precision.agree_on_overflow``, so
this plugin never imports a precision plugin. Process topology, the group and the collectives
are the core's ``ProcessGroupStrategy``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from treadle.components import NoSyncCapable
from treadle.distributed import ProcessGroupStrategy, env_int
from treadle.errors import UsageError

from treadle_fsdp import options as fsdp_options
from treadle_fsdp import sharded_checkpoint, wrapping


def precision_dtype(precision: Any) -> Optional[torch.dtype]:
    """The low-precision dtype the run's precision computes in (``Precision.compute_dtype``), or
    None for full precision; float32 means no mixed-precision policy."""
    value = precision.compute_dtype
    if value is None:
        return None
    if not isinstance(value, torch.dtype):
        raise UsageError(f"strategy fsdp: precision {getattr(precision, 'name', '?')!r} names no torch dtype ({value!r})")
    return None if value == torch.float32 else value


class FsdpStrategy(ProcessGroupStrategy, NoSyncCapable):
    """Fully sharded data parallel on FSDP2 over the processes a launcher started."""

    name = "fsdp"
    wraps_model_first = True

    def __init__(self, args: Any, backend: Any, precision: Any) -> None:
        super().__init__(args, backend, precision)
        try:
            self.settings = fsdp_options.settings(args.fsdp, args.load_json_field("fsdp_config"))
        except fsdp_options.FsdpOptionError as exc:
            raise UsageError("\n".join(exc.problems)) from None
        self.mesh: Any = None
        self._model: Optional[torch.nn.Module] = None

    def setup_environment(self) -> None:
        """Join (or adopt) the process group, then lay the processes out on this mode's mesh."""
        if self.mesh is not None:
            return
        super().setup_environment()
        self.mesh = self._build_mesh()

    def _build_mesh(self) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        kind, world = self.settings.mesh_kind, self.world_size
        device_type = self.root_device.type
        if kind == "shard":
            return init_device_mesh(device_type, (world,), mesh_dim_names=("shard",))
        if kind == "replicate":
            return init_device_mesh(device_type, (world, 1), mesh_dim_names=("replicate", "shard"))
        per_node = env_int("LOCAL_WORLD_SIZE", world)
        if world % per_node:
            raise UsageError(
                f"--fsdp {self.settings.mode}: {world} processes do not split into nodes of {per_node} (LOCAL_WORLD_SIZE)"
            )
        return init_device_mesh(device_type, (world // per_node, per_node), mesh_dim_names=("replicate", "shard"))

    # model -----------------------------------------------------------------------------------
    def model_init_context(self) -> contextlib.AbstractContextManager:
        """``cpu_ram_efficient_loading``: rank 0 builds the model as its code says (pretrained or
        initialised), the other ranks with their parameters on the meta device; ``setup_model``
        fills their shards from rank 0. The rank is the launcher's (RANK): the process group may
        not exist yet."""
        if not self.settings.meta_init or self.global_rank == 0:
            return contextlib.nullcontext()
        return wrapping.parameters_on_meta()

    def setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``fully_shard`` per unit and on the root (the loop converted the model for the precision
        already); with ``cpu_ram_efficient_loading`` the shards are then filled from rank 0's weights."""
        self.setup_environment()
        if not any(p.requires_grad for p in model.parameters()):
            raise UsageError("strategy fsdp: the model has no trainable parameter (all have requires_grad=False)")
        if self.world_size > 1 and not self.precision.agree_on_overflow(self._max_over_processes):
            raise UsageError(
                f"strategy fsdp: precision {self.precision.name!r} scales the loss but cannot share its overflow check "
                "(Precision.agree_on_overflow), so processes holding different gradient shards could disagree about "
                "skipping a step; use bf16, or a precision that implements it (treadle-amp's fp16 does)"
            )
        rank0_state = self._weights_before_sharding(model)
        self._split_before_sharding(model)
        wrapping.shard_model(
            model, self.mesh, self.settings, param_dtype=precision_dtype(self.precision),
            pin_memory=self.backend.pin_memory(),
        )
        if rank0_state is not None:
            shards_on = torch.device("cpu") if self.settings.offload else self.root_device
            wrapping.fill_from_rank0(model, shards_on, rank0_state)
        self._model = model
        return model

    def _weights_before_sharding(self, model: torch.nn.Module) -> Optional[dict[str, Any]]:
        """Make every rank start from rank 0's weights. ``cpu_ram_efficient_loading`` on several
        processes: rank 0's full state dict (an empty dict on the others), every rank's parameters
        now empty, to be filled after sharding; else None, the weights on the device and, with
        ``sync_module_states``, broadcast from rank 0."""
        if self.settings.meta_init and self.world_size > 1:
            missing = self.broadcast_object(wrapping.meta_parameter_names(model) if self.global_rank == 0 else None)
            if missing:
                raise UsageError(
                    f"fsdp_config cpu_ram_efficient_loading: rank 0's model has parameters on the meta device "
                    f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), but rank 0 must hold the real "
                    "weights the other ranks receive; build the model through model_init or a task (the strategy "
                    "builds it empty on the other ranks only), or pass a model with real weights"
                )
            rank0_state = wrapping.empty_parameters(model)  # a rank built in full (a model passed in) frees it here
            return rank0_state if self.global_rank == 0 else {}
        if wrapping.has_meta_parameters(model):
            raise UsageError(
                "strategy fsdp: the model has parameters on the meta device, and nothing would fill them; build the "
                "model with real weights (with fsdp_config cpu_ram_efficient_loading=true only rank 0 needs them)"
            )
        model.to(self.root_device)
        if self.settings.sync_module_states and self.world_size > 1:
            wrapping.broadcast_from_rank0(model)
        return None

    def _split_before_sharding(self, model: torch.nn.Module) -> None:
        """What happens to the (possibly empty) model between syncing it and ``fully_shard`` (the N-D
        strategy splits it by its tensor-parallel plan)."""

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return getattr(model, "_orig_mod", model)  # fully_shard changes the module in place

    def no_backward_sync(self, model: torch.nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Accumulation micro-batches before the last keep unreduced gradients (one reduce-scatter per step)."""
        return _gradient_sync(self.unwrap_model(model), not enabled)

    # gradients -------------------------------------------------------------------------------
    def _max_over_processes(self, flags: torch.Tensor) -> torch.Tensor:
        """The reducer a loss scaler's found-inf flags go through: an inf in any process's shard counts everywhere."""
        return self.all_reduce(flags, op="max")

    def grad_norm(self, model: torch.nn.Module) -> Optional[torch.Tensor]:
        """The norm of the whole gradient, over every shard."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return None
        return _full(torch.nn.utils.get_total_norm(grads))

    def clip_grad_norm(self, model: torch.nn.Module, optimizer: Any, max_norm: float) -> torch.Tensor:
        self.precision.unscale_gradients(optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        return _full(torch.nn.utils.clip_grad_norm_(params, max_norm))

    # state -----------------------------------------------------------------------------------
    def model_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full weights, gathered shard by shard to rank 0 on the CPU (other ranks get an empty dict)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.unwrap_model(model), options=options)

    final_model_state_dict = model_state_dict

    def load_model_state_dict(self, model: torch.nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Full weights (e.g. a ``model.safetensors``) into the sharded model: each rank keeps its shard."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.unwrap_model(model), state, options=StateDictOptions(full_state_dict=True, strict=strict))

    def optimizer_state_dict(self, optimizer: Any) -> dict[str, Any]:
        """The full optimizer state on rank 0 (for a checkpoint in the single-process layout)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self._require_model(), optimizer, options=options)

    def load_optimizer_state_dict(self, optimizer: Any, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self._require_model(), optimizer, state, options=StateDictOptions(full_state_dict=True))

    def _require_model(self) -> torch.nn.Module:
        if self._model is None:
            raise RuntimeError("strategy fsdp: the optimizer state needs the sharded model; call setup_model first")
        return self._model

    def save_checkpoint(self, staging_dir: Path, model: torch.nn.Module, optimizer: Any, *, writer: bool) -> Any:
        """Every rank writes its shard with DCP; ``state_dict_type=FULL_STATE_DICT`` adds a consolidated model.safetensors."""
        from treadle.checkpoint.model_files import WEIGHTS_NAME, write_weights
        from treadle.components import CheckpointWrite

        model = self.unwrap_model(model)
        files = sharded_checkpoint.save_sharded(Path(staging_dir), model, optimizer)
        if self.settings.state_dict_type == "full":
            full = self.model_state_dict(model)  # collective: every rank sends its shards
            if writer:
                write_weights(Path(staging_dir) / WEIGHTS_NAME, full)
        return CheckpointWrite(pickled=files if writer else [])

    def load_checkpoint(self, checkpoint_dir: Path, model: torch.nn.Module, optimizer: Any, manifest: Mapping[str, Any]) -> None:
        """A DCP checkpoint reshards onto this run's processes; one in the full layout (another strategy's) is
        read in full and sharded. ``optimizer`` None: the weights only."""
        if sharded_checkpoint.has_shards(manifest):
            sharded_checkpoint.load_sharded(Path(checkpoint_dir), self.unwrap_model(model), optimizer)
        else:
            super().load_checkpoint(checkpoint_dir, model, optimizer, manifest)

    def teardown(self) -> None:
        self.mesh = None
        super().teardown()


def _full(norm: torch.Tensor) -> torch.Tensor:
    """A DTensor norm (partial over the shards) as a plain tensor holding the global value."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


@contextlib.contextmanager
def _gradient_sync(model: torch.nn.Module, enabled: bool) -> Any:
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is None:
        yield
        return
    setter(enabled)
    try:
        yield
    finally:
        setter(True)


__all__ = ["FsdpStrategy", "precision_dtype"]
