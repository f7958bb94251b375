"""The small contracts the training loop needs from each selected component.

A plugin's implementation class subclasses one of these. The loop talks only to these methods,
never to a concrete plugin class; optional abilities are capability mixins (``NoSyncCapable``)
checked with ``isinstance`` on the mixin. torch is imported inside methods, not at module level,
so the registries can describe components without loading torch.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from treadle.markers import hookimpl

if TYPE_CHECKING:
    import torch

    from treadle.args import TrainingArguments


class Backend(ABC):
    """A device family (cpu, cuda, mps, xla): where tensors live and how the device is driven."""

    name: str = ""

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """Whether this machine can run the backend; must not raise."""

    @classmethod
    def device_count(cls) -> int:
        return 1 if cls.is_available() else 0

    @abstractmethod
    def setup_device(self, local_rank: int) -> torch.device:
        """Return the device this process trains on (and make it current)."""

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op where the device is synchronous)."""

    def empty_cache(self) -> None:
        """Release cached device memory (``torch_empty_cache_steps``)."""

    def rng_state(self) -> dict[str, torch.Tensor]:
        """Device RNG state to keep in a checkpoint (the CPU generator is saved by the core)."""
        return {}

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``rng_state`` returned."""

    def teardown(self) -> None:
        """Free what ``setup_device`` acquired."""


class Precision(ABC):
    """How numbers are represented: autocast, gradient scaling, module conversion."""

    name: str = ""
    scales_loss: bool = False
    """True for a precision that scales the loss (and so skips overflowing steps itself in
    ``optimizer_step``): the loop then leaves non-finite gradients to it instead of checking them."""

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args

    def convert_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """Cast or wrap the model's parameters before training (identity by default)."""
        return model

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Context for the training forward pass (e.g. autocast)."""
        return contextlib.nullcontext()

    def eval_context(self) -> contextlib.AbstractContextManager:
        """Context for evaluation / prediction forward passes."""
        return self.forward_context()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true scale before clipping (for loss scaling)."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step the optimizer; return False when the step was skipped (e.g. scaler overflow)."""
        optimizer.step()
        return True

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (and tensors) to checkpoint, e.g. the loss scale."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def scheduler_needs_metric(scheduler: Any) -> bool:
    """Whether ``scheduler.step`` wants the evaluation metric (``metric_for_best_model``).

    Such a scheduler sets ``needs_metric = True`` (torch's ``ReduceLROnPlateau`` as the builtin
    ``reduce_lr_on_plateau`` returns it, or a plugin's own): the loop steps it after each
    evaluation with the metric, instead of after each optimizer step.
    """
    return bool(getattr(scheduler, "needs_metric", False))


class Strategy(ABC):
    """How work is spread over processes: model wrapping, collectives, state (de)sharding.

    A strategy owns the backend and the precision for the run; the loop calls ``backward``,
    ``clip_grad_norm`` and ``optimizer_step`` here so a strategy can route them (DeepSpeed's
    engine does all three itself).
    """

    name: str = ""

    def __init__(self, args: TrainingArguments, backend: Backend, precision: Precision) -> None:
        self.args = args
        self.backend = backend
        self.precision = precision
        self.root_device: Optional[torch.device] = None

    # process topology ------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return 1

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def is_local_zero(self) -> bool:
        return self.local_rank == 0

    def setup_environment(self) -> None:
        """Start the process group (if any) and pick the device."""
        self.root_device = self.backend.setup_device(self.local_rank)

    # model and optimizer ---------------------------------------------------------------------
    @abstractmethod
    def setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move and wrap the model for this strategy; returns the module to call."""

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return optimizer

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The user's module inside whatever wrapper ``setup_model`` added."""
        return model

    def backward(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        self.precision.backward(loss)

    def clip_grad_norm(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
        import torch

        self.precision.unscale_gradients(optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> bool:
        return self.precision.optimizer_step(optimizer)

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)

    # data ------------------------------------------------------------------------------------
    def shard_info(self) -> tuple[int, int]:
        """``(num_replicas, rank)`` for splitting the data between processes."""
        return self.world_size, self.global_rank

    # collectives (identity on one process) ---------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` from every process along dim 0."""
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self, name: str = "") -> None:
        """Wait until every process reaches this point."""

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    # checkpoint state --------------------------------------------------------------------------
    def model_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full (unsharded) model weights, on rank 0 at least."""
        return self.unwrap_model(model).state_dict()

    def load_model_state_dict(self, model: torch.nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        self.unwrap_model(model).load_state_dict(state, strict=strict)

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def teardown(self) -> None:
        """End the process group and release the backend."""
        self.backend.teardown()


class NoSyncCapable(ABC):
    """Capability: skip gradient synchronisation on accumulation micro-batches."""

    @abstractmethod
    def no_backward_sync(self, model: torch.nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Context in which backward does not synchronise gradients when ``enabled``."""


class Reporter:
    """A metrics sink (console, jsonl, tensorboard, wandb, ...).

    A selected reporter is registered with the run's hook caller, so it receives lifecycle
    hooks like any plugin. Subclasses implement ``setup`` / ``log`` / ``finish``; the hook
    implementations below call them on the main process only, so a reporter needs no rank
    logic of its own. Override a ``treadle_on_*`` method to see more events.
    """

    name: str = ""
    main_process_only: bool = True

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args
        self._active = False

    def setup(self, args: TrainingArguments, state: Any, model: Any) -> None:
        """Open files / runs. Called once at train begin (or at first log outside training)."""

    def log(self, logs: dict[str, float], step: int) -> None:
        """Write one set of metrics."""

    def finish(self) -> None:
        """Flush and close; must tolerate being called twice."""

    def _should_report(self, state: Any) -> bool:
        return not self.main_process_only or state.is_world_process_zero

    @hookimpl
    def treadle_on_train_begin(self, trainer: Any, args: TrainingArguments, state: Any) -> None:
        if self._should_report(state) and not self._active:
            self.setup(args, state, getattr(trainer, "model", None))
            self._active = True

    @hookimpl
    def treadle_on_log(self, trainer: Any, args: TrainingArguments, state: Any, logs: dict[str, float]) -> None:
        if not self._should_report(state):
            return
        if not self._active:
            self.setup(args, state, getattr(trainer, "model", None))
            self._active = True
        self.log(logs, state.global_step)

    @hookimpl
    def treadle_on_train_end(self, state: Any) -> None:
        if self._active:
            self.finish()
            self._active = False


class HubSync(ABC):
    """Uploads checkpoints and the final model to a model hub."""

    name: str = ""

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args

    @abstractmethod
    def push(self, folder: str, *, commit_message: str, blocking: bool = True) -> None:
        """Upload ``folder`` to the repository named by the ``hub_*`` arguments."""


@dataclass
class TaskParts:
    """What a task builds: everything a Trainer needs besides the arguments.

    A task is a function ``(args) -> TaskParts`` (``--task module:function``). ``model`` may be
    omitted when ``model_init`` is given.
    """

    model: Any = None
    train_dataset: Any = None
    eval_dataset: Any = None
    test_dataset: Any = None
    data_collator: Optional[Callable] = None
    compute_metrics: Optional[Callable] = None
    model_init: Optional[Callable] = None
    preprocess_logits_for_metrics: Optional[Callable] = None
    callbacks: Optional[list] = None

