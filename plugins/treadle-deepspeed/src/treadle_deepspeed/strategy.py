"""The ``deepspeed`` strategy: DeepSpeed's engine runs backward, clipping, the optimizer and the scheduler.

The loop builds the optimizer and scheduler on the plain model (``wraps_model_first = False``)
unless the DeepSpeed config declares them, then hands all three to ``setup``, which calls
``deepspeed.initialize`` once with the config whose ``"auto"`` values ``treadle_deepspeed.config``
filled from the arguments. From then on the loop's per-step operations go to the engine:
``backward`` -> ``engine.backward`` (treadle already weights accumulation micro-batches, so
DeepSpeed must not divide again), ``optimizer_step`` -> ``engine.step`` (clip, step, schedule,
zero the gradients); ``no_backward_sync`` marks the accumulation micro-batches before the last.

With ``parallelism_config={"sp_size": N}`` (ALST/Ulysses sequence parallelism, see
``treadle_deepspeed.sequence_parallel``) blocks of N ranks share each batch: ``shard_info`` is
the data-parallel (blocks, index), ``micro_batch`` hands each rank its slice of the sequences
with DeepSpeed's all-to-all attention routed through forward and backward, the engine gets
DeepSpeed's sequence-parallel ``mpu`` (so it reduces gradients over every rank; where it sums
over a block, ``backward`` divides by N so the block's slices average, as ``MicroBatch`` asks), and
evaluation gathers over the data-parallel ranks only (each block computes whole sequences).

Checkpoints hold DeepSpeed's own files in ``deepspeed/`` (torch pickles: each process writes its
ZeRO partitions, and the manifest lists every ``.pt`` under ``pickled``) next to a pickle-free,
consolidated ``model.safetensors`` that ``evaluate`` / ``predict`` and the exported model read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from treadle import parallelism
from treadle.checkpoint import checkpoint_file, pickled_files, read_full_state, write_full_state
from treadle.components import CheckpointWrite, MicroBatch, NoSyncCapable
from treadle.distributed import ProcessGroupStrategy
from treadle.errors import CheckpointError, UsageError
from treadle.flow import option_value
from treadle_deepspeed.config import engine_config, lookup, read_config, zero_stage
from treadle_deepspeed.options import OFFERED, OTHER_STRATEGY_HINT

logger = logging.getLogger("treadle.deepspeed")

CHECKPOINT_SUBDIR = "deepspeed"
"""Where DeepSpeed's own checkpoint files go inside ``checkpoint-<step>/`` (its "tag")."""

_ACCELERATORS = {"cpu": "cpu", "cuda": "cuda", "xpu": "xpu", "mps": "mps", "hpu": "hpu", "npu": "npu"}
"""treadle device type -> the ``DS_ACCELERATOR`` that drives the same device."""


class DeepSpeedStrategy(ProcessGroupStrategy, NoSyncCapable):
    """DeepSpeed's engine over the processes a launcher started (or one process on its own)."""

    name = "deepspeed"
    wraps_model_first = False
    steps_scheduler = True
    clips_gradients = True

    def __init__(self, args: Any, backend: Any, precision: Any) -> None:
        super().__init__(args, backend, precision)
        self.config: dict[str, Any] = read_config(args.deepspeed) if args.deepspeed is not None else {}
        self.stage = zero_stage(self.config)
        self.engine: Any = None
        self._boundary = True
        self._pre_step_norm: Optional[torch.Tensor] = None
        self.layout: Optional[parallelism.Layout] = parallelism.strategy_layout(args, OFFERED, "deepspeed", OTHER_STRATEGY_HINT)
        self.sequence_parallel: Any = None  # treadle_deepspeed.sequence_parallel.SequenceParallel, once joined
        self._slice_divisor = 1  # see _engine_sums_slices
        self._set_local_rank = False  # whether setup_environment wrote LOCAL_RANK (teardown takes it back)
        self._transformers_zero3: Any = None  # zero_init.TransformersZero3 under ZeRO-3, released at teardown
        self._inference_only = False  # self.engine was made by setup_model for an evaluation, without optimizer
        self.evaluation_group: Any = None  # the data-parallel group under sp: a block evaluates each batch once

    # sizes (read by Trainer.get_tp_size / get_cp_size / get_sp_size) -------------------------
    @property
    def sp_size(self) -> int:
        return self.layout.sp if self.layout else 1

    @property
    def tp_size(self) -> int:
        return 1

    @property
    def cp_size(self) -> int:
        return 1

    def _resolved(self) -> parallelism.Layout:
        assert self.layout is not None
        self.layout = parallelism.resolved(self.layout, self.world_size)
        return self.layout

    @property
    def data_parallel_size(self) -> int:
        """Processes that see different batches (the world, less the sequence-parallel blocks)."""
        return self._resolved().dp_size if self.layout else self.world_size

    def shard_info(self) -> tuple[int, int]:
        """(data-parallel replicas, this process's index): a sequence-parallel block shares its batches."""
        if self.layout is None:
            return super().shard_info()
        layout = self._resolved()
        return layout.dp_size, layout.dp_rank(self.global_rank)

    def process_group_backend(self) -> str:
        """``--ddp_backend``, else what DeepSpeed's accelerator talks over (gloo on the CPU, nccl on CUDA)."""
        from deepspeed.accelerator import get_accelerator

        return self.args.ddp_backend or get_accelerator().communication_backend_name()

    def setup_environment(self) -> None:
        """Pick the device, tell DeepSpeed which accelerator drives it, join the process group, hand it to DeepSpeed."""
        if self.root_device is None:
            self.root_device = self.backend.setup_device(self.local_rank)
        os.environ.setdefault("DS_ACCELERATOR", _ACCELERATORS.get(self.root_device.type, self.root_device.type))
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator().device_name()
        if accelerator != self.root_device.type:
            raise UsageError(
                f"strategy deepspeed: the backend trains on {self.root_device.type} but DeepSpeed drives {accelerator} "
                f"(DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR')}); set DS_ACCELERATOR={self.root_device.type} "
                "or choose the matching --backend"
            )
        super().setup_environment()
        _warn_if_build_is_stuck()
        if "LOCAL_RANK" not in os.environ:  # the engine reads it; a launcher sets it, a plain process does not
            os.environ["LOCAL_RANK"] = str(self.local_rank)
            self._set_local_rank = True
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False, verbose=False)
        if self.sp_size > 1 and self.sequence_parallel is None:
            from treadle_deepspeed.sequence_parallel import SequenceParallel, data_parallel_group

            self._resolved()
            self.sequence_parallel = SequenceParallel(self.sp_size)
            self.evaluation_group = data_parallel_group(self.sp_size)

    # model, optimizer, scheduler -------------------------------------------------------------
    def model_init_context(self) -> contextlib.AbstractContextManager:
        """ZeRO-3: the model is built partitioned, never whole on a process (``treadle_deepspeed.zero_init``);
        the process group is joined first, since ``zero.Init`` partitions over it. Otherwise as its code says."""
        if self.stage != 3 or getattr(self.args, "deepspeed_zero3_init", True) is False:
            return contextlib.nullcontext()
        from treadle_deepspeed import zero_init

        self.setup_environment()
        config = self._config_without_optimizer(hidden_size=None)
        self._tell_transformers(config)
        # under sequence parallel the batch is counted per block and ZeRO partitions over every rank, as the engine's mpu says
        state = self.sequence_parallel.state if self.sequence_parallel is not None else None
        return zero_init.partitioned_construction(config, self._transformers_zero3, state)

    def _config_without_optimizer(self, hidden_size: Optional[int]) -> dict[str, Any]:
        """The filled config less its optimizer and scheduler: for ``zero.Init`` and an engine that only evaluates."""
        from treadle_deepspeed.zero_init import without_optimizer

        return engine_config(
            without_optimizer(self.config), self.args, precision=option_value(self.args.precision),
            hidden_size=hidden_size, num_training_steps=None, client_optimizer=False, world_size=self.data_parallel_size,
        )

    def _tell_transformers(self, config: dict[str, Any]) -> None:
        """Hold transformers' ZeRO-3 flag from the first use on (loading into partitions, ``generate``'s sync)."""
        if self.stage == 3 and self._transformers_zero3 is None:
            from treadle_deepspeed.zero_init import TransformersZero3

            self._transformers_zero3 = TransformersZero3(config)

    def creates_optimizer(self) -> bool:
        return isinstance(self.config.get("optimizer"), dict)

    def creates_scheduler(self) -> bool:
        return isinstance(self.config.get("scheduler"), dict)

    def setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The engine once ``setup`` made one. Before that (evaluate / predict without training): a
        model built partitioned (ZeRO-3) gets an inference engine, which gathers each layer for its
        forward; any other model goes to the device as it is."""
        if self.engine is not None and self.engine.module is model:
            return self.engine
        if self.root_device is None:
            self.setup_environment()
        if _partitioned(model):
            return self._inference_engine(model)
        return model.to(self.root_device)

    def _inference_engine(self, model: torch.nn.Module) -> Any:
        """DeepSpeed's ZeRO-3 engine without an optimizer (ZeRO-Inference); ``setup`` replaces it to train."""
        import deepspeed

        config = self._config_without_optimizer(hidden_size=_hidden_size(model))
        mpu = self.sequence_parallel.state if self.sequence_parallel is not None else None
        self.engine, *_ = deepspeed.initialize(model=model, config=config, dist_init_required=False, mpu=mpu)
        self._inference_only = True
        return self.engine

    def setup(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        """One ``deepspeed.initialize`` with the filled config: the engine, its optimizer and scheduler."""
        import deepspeed

        if self.root_device is None:
            self.setup_environment()
        if self._inference_only:  # an evaluation before training made an engine without optimizer
            self.engine.destroy()
            self.engine, self._inference_only = None, False
        config = engine_config(
            self.config, self.args, precision=option_value(self.args.precision),
            hidden_size=_hidden_size(model), num_training_steps=self._num_training_steps(),
            client_optimizer=optimizer is not None, world_size=self.data_parallel_size,
        )
        if "transformers" in sys.modules:  # a transformers model: generate() must know the weights are partitioned
            self._tell_transformers(config)
        mpu = None
        if self.sequence_parallel is not None:
            self.sequence_parallel.attach(model)  # refuses a model Ulysses would compute wrongly
            mpu = self.sequence_parallel.state
            self._slice_divisor = self._engine_sums_slices(config)
        parameters = [p for p in model.parameters() if p.requires_grad] if optimizer is None else None
        try:
            engine, ds_optimizer, _, ds_scheduler = deepspeed.initialize(
                model=model, optimizer=optimizer, model_parameters=parameters, lr_scheduler=scheduler,
                config=config, dist_init_required=False, mpu=mpu,
            )
        except (AssertionError, ValueError, TypeError) as exc:  # DeepSpeed's config checks
            raise UsageError(f"strategy deepspeed: DeepSpeed refused the config: {exc}") from exc
        self.engine = engine
        if engine.bfloat16_enabled() or engine.fp16_enabled():
            _cast_float_inputs(engine.module, torch.bfloat16 if engine.bfloat16_enabled() else torch.float16)
        return engine, ds_optimizer, ds_scheduler

    def _engine_sums_slices(self, config: dict[str, Any]) -> int:
        """What the engine's gradient reduction leaves for ``backward`` to divide by: ``sp_size`` where it
        sums over a sequence-parallel block, 1 where it already averages over every rank.

        DeepSpeed 0.19 does both: ZeRO 0-2 (and ZeRO-3's all-reduce path) divide by the data-parallel
        size only, ZeRO-3's reduce-scatter (its default) by all ranks of the sequence-data-parallel
        group. ZeRO-3's all-reduce path picks its reduction per gradient bucket, so it is refused.
        """
        if self.stage != 3:
            return self.sp_size
        if lookup(config, "zero_optimization.reduce_scatter") is False:
            raise UsageError(
                f"parallelism_config sp_size={self.sp_size} with ZeRO-3: zero_optimization.reduce_scatter is false, "
                "and DeepSpeed's ZeRO-3 all-reduce path then averages some gradient buckets over the sequence slices "
                "and sums others; remove the key (reduce_scatter defaults to true) or use ZeRO stage 2"
            )
        return 1

    def _num_training_steps(self) -> Optional[int]:
        """The run's optimizer steps (set by the loop before ``setup``), for a config scheduler's "auto" lengths."""
        if self.num_training_steps:
            return int(self.num_training_steps)
        return self.args.max_steps if self.args.max_steps and self.args.max_steps > 0 else None

    def num_parameters(self, model: torch.nn.Module, trainable_only: bool = False) -> int:
        """ZeRO-3 holds a partition of each parameter (``numel()`` 0): its full size is ``ds_numel``."""
        module = self.unwrap_model(model)
        return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad or not trainable_only)

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        inner = getattr(model, "_orig_mod", model)
        return inner.module if self.engine is not None and inner is self.engine else inner

    def compile_model(self, model: torch.nn.Module) -> torch.nn.Module:
        raise UsageError(
            "--torch_compile with strategy deepspeed: compile through DeepSpeed's own config instead "
            '("compile" section), or drop --torch_compile'
        )

    # the step --------------------------------------------------------------------------------
    def no_backward_sync(self, model: torch.nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return self._micro_batch(enabled)

    @contextlib.contextmanager
    def _micro_batch(self, before_last: bool) -> Iterator[None]:
        """Accumulation micro-batches before the last one are not the engine's step boundary."""
        self._boundary = not before_last
        try:
            yield
        finally:
            self._boundary = True

    def micro_batch(self, inputs: dict[str, Any]) -> contextlib.AbstractContextManager[MicroBatch]:
        """This rank's slice of the micro-batch under sequence parallelism (Ulysses attention routed
        until the backward has run); the micro-batch as it is otherwise."""
        if self.sequence_parallel is None or self.sequence_parallel.module is None:
            return contextlib.nullcontext(MicroBatch(inputs))
        label_names = getattr(self.args, "label_names", None) or ["labels"]
        return self.sequence_parallel.active(inputs, label_names[0])

    def backward(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        self.engine.set_gradient_accumulation_boundary(self._boundary)
        if self._slice_divisor > 1:
            # the engine sums gradients over a sequence-parallel block (and averages over the
            # blocks); the loop weighted each slice so that the block's slices average
            loss = loss / self._slice_divisor
        self.engine.backward(loss, scale_wrt_gas=False)  # the loop weighted the micro-batch losses already

    def optimizer_step(self, optimizer: Any, model: torch.nn.Module) -> bool:
        """``engine.step``: clip, step the optimizer and the scheduler, zero the gradients.

        False when the engine skipped the step (an fp16 overflow)."""
        if self.stage == 0 and not (self.engine.bfloat16_enabled() or self.engine.fp16_enabled()):
            # a plain torch optimizer reports no norm: take it before the engine clears the gradients
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            self._pre_step_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        self.engine.step()
        return bool(self.engine.was_step_applied())

    def grad_norm(self, model: torch.nn.Module) -> Optional[torch.Tensor]:
        """The global norm of the last step's gradients, before clipping (as the engine computed it)."""
        if self.engine is None:
            return None
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            norm = self._pre_step_norm
        return None if norm is None else torch.as_tensor(norm, dtype=torch.float32)

    def zero_grad(self, optimizer: Any) -> None:
        """The engine zeroes after each step; this matters where the loop drops a step (NaN policy)."""
        if self.engine is not None and self.engine.optimizer is not None and hasattr(self.engine.optimizer, "zero_grad"):
            self.engine.optimizer.zero_grad()
        elif optimizer is not None:
            optimizer.zero_grad(set_to_none=True)

    # weights and checkpoints -----------------------------------------------------------------
    def model_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full weights on rank 0: ZeRO-3 gathers its partitions (a collective: every rank calls this)."""
        if self.engine is not None and self.engine.zero_optimization_partition_weights():
            return self.engine._zero3_consolidated_16bit_state_dict() or {}
        module = self.unwrap_model(model)
        if _partitioned(module):  # built under zero.Init, no engine yet
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters())):
                state = {name: value.detach().clone() for name, value in module.state_dict().items()}
            return state if self.is_global_zero else {}
        return module.state_dict()

    def load_model_state_dict(self, model: torch.nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        module = self.unwrap_model(model)
        if not _partitioned(module):
            module.load_state_dict(state, strict=strict)
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
            if self.is_global_zero:
                module.load_state_dict(state, strict=strict)

    def save_checkpoint(
        self, staging_dir: Path, model: torch.nn.Module, optimizer: Any, *, writer: bool
    ) -> Optional[CheckpointWrite]:
        """DeepSpeed's checkpoint in ``deepspeed/`` (every rank its partitions) + the consolidated weights."""
        if self.engine is None or optimizer is None:  # no engine yet, or save_only_model: the weights suffice
            write_full_state(self, staging_dir, model, None, writer=writer)
            return None
        self.engine.save_checkpoint(str(staging_dir), tag=CHECKPOINT_SUBDIR, client_state={}, save_latest=False)
        write_full_state(self, staging_dir, model, None, writer=writer)
        self.barrier("treadle-deepspeed-saved")
        if not writer:
            return None
        own = Path(staging_dir) / CHECKPOINT_SUBDIR
        return CheckpointWrite(pickled=sorted(p.relative_to(staging_dir).as_posix() for p in own.rglob("*.pt")))

    def load_checkpoint(self, checkpoint_dir: Path, model: torch.nn.Module, optimizer: Any, manifest: dict[str, Any]) -> None:
        """Resume from DeepSpeed's files (loaded with pickle: they were verified against the manifest);
        the weights alone (``optimizer`` None) come from ``model.safetensors``, pickle-free."""
        if optimizer is None or self.engine is None:
            read_full_state(self, checkpoint_dir, model, None, manifest)
            return
        pickled = pickled_files(manifest)
        if not any(name.startswith(f"{CHECKPOINT_SUBDIR}/") for name in pickled):
            raise CheckpointError(
                f"{checkpoint_dir} was written by strategy {manifest.get('strategy') or 'unknown'!r}, not deepspeed: it "
                "has no DeepSpeed optimizer state to resume. Resume it with the strategy that wrote it, or start "
                "a new run from its model.safetensors."
            )
        for name in pickled:
            checkpoint_file(checkpoint_dir, manifest, name)  # listed in the verified manifest, or an error
        try:
            path, _ = self.engine.load_checkpoint(
                str(checkpoint_dir), tag=CHECKPOINT_SUBDIR, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        except (RuntimeError, KeyError, ValueError, AssertionError) as exc:
            raise CheckpointError(
                f"{checkpoint_dir}: DeepSpeed could not load its state ({exc}); resume with the DeepSpeed config "
                "(ZeRO stage, number of processes, parallelism_config sp_size) the checkpoint was written with"
            ) from exc
        if path is None:
            raise CheckpointError(f"{checkpoint_dir / CHECKPOINT_SUBDIR}: DeepSpeed found no checkpoint to load")

    def teardown(self) -> None:
        """Release the engine's hooks and buffers, DeepSpeed's sequence-parallel state, then the process group."""
        if self.engine is not None and hasattr(self.engine, "destroy"):
            self.engine.destroy()
        if self.sequence_parallel is not None:
            from treadle_deepspeed.sequence_parallel import forget_engine_groups

            forget_engine_groups(self.sequence_parallel.state, world_destroyed=self._owns_group)
            self.sequence_parallel, self.evaluation_group, self._slice_divisor = None, None, 1
        if self._transformers_zero3 is not None:
            self._transformers_zero3.release()
            self._transformers_zero3 = None
        if self._set_local_rank:
            # left behind, it would make this process look launched to whatever runs next in it
            # (a second Trainer, or `treadle train --nproc_per_node` refusing to start processes)
            os.environ.pop("LOCAL_RANK", None)
            self._set_local_rank = False
        super().teardown()


_STALE_LOCK_S = 600


def _warn_if_build_is_stuck() -> None:
    """Say where the wait is when a killed build left its lock: torch would wait for it forever.

    DeepSpeed compiles its shared-memory op on the first start in an environment (seconds to
    two minutes, under a lock file); a run killed meanwhile leaves the lock behind.
    """
    import time

    try:
        from torch.utils.cpp_extension import _get_build_directory

        lock = Path(_get_build_directory("deepspeed_shm_comm", verbose=False)) / "lock"
        age = time.time() - lock.stat().st_mtime
    except (ImportError, OSError, AttributeError, TypeError):
        return
    if age > _STALE_LOCK_S:
        logger.warning(
            "%s is %d minutes old: a killed build of DeepSpeed's shm op left it, and the engine will wait for it "
            "forever. If no other process is compiling, delete it.", lock, age // 60,
        )


def _partitioned(module: torch.nn.Module) -> bool:
    """Whether ZeRO-3 holds the module's parameters as partitions (built under ``deepspeed.zero.Init``)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _hidden_size(model: torch.nn.Module) -> Optional[int]:
    """The model's hidden size, for ZeRO's ``"auto"`` bucket sizes (Hugging Face configs carry one)."""
    config = getattr(model, "config", None)
    for name in ("hidden_size", "d_model", "n_embd"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    hidden = getattr(config, "hidden_sizes", None)
    return max(hidden) if isinstance(hidden, (list, tuple)) and hidden else None


def _cast_float_inputs(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """The engine holds half-precision weights: float inputs are cast to match (integer ids stay)."""

    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(dtype)
        if isinstance(value, (list, tuple)):
            return type(value)(cast(v) for v in value)
        if isinstance(value, dict):
            return {k: cast(v) for k, v in value.items()}
        return value

    def hook(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return cast(args), cast(kwargs)

    module.register_forward_pre_hook(hook, with_kwargs=True)


__all__ = ["CHECKPOINT_SUBDIR", "DeepSpeedStrategy"]
