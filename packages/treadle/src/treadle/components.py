"""The small contracts the training loop needs from each selected component.

A plugin's implementation class subclasses one of these. The loop talks only to these methods,
never to a concrete plugin class; optional abilities are capability mixins (``NoSyncCapable``)
checked with ``isinstance`` on the mixin. torch is imported inside methods, not at module level,
so the registries can describe components without loading torch.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from treadle.markers import hookimpl

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from treadle.args import TrainingArguments


class Backend(ABC):
    """A device family (cpu, cuda, mps, xla): where tensors live and how the device is driven.

    The loop asks the backend for the device, whether loaders pin memory, how a batch gets onto
    the device, and tells it where each step ends (``step_end``; XLA cuts its lazy graph there).
    The loop decides once per run whether ``step_end`` and ``process_dataloader`` are overridden
    and calls neither when they are not, so the defaults cost nothing per step.
    """

    name: str = ""

    n_gpu: int = 0
    """GPUs one process drives (``TrainingArguments.n_gpu``): 1 for cuda and mps, 0 otherwise."""

    parallel_mode: Optional[str] = None
    """``TrainingArguments.parallel_mode`` for a backend with its own replica model (XLA: 'tpu');
    None lets the process count decide."""

    distributed_backend: Optional[str] = None
    """The torch.distributed backend a process group on this device uses unless ``--ddp_backend``
    says otherwise (cuda: nccl); None leaves it to the strategy (gloo for host tensors)."""

    places_batches: bool = True
    """Whether the loop hands each batch to ``move_batch``. False where batches are already on the
    device when the loader yields them (the CPU: host tensors are where the model is)."""

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """Whether this machine can run the backend; must not raise."""

    @classmethod
    def unavailable_reason(cls) -> Optional[str]:
        """Why ``is_available()`` is false, in a few words for ``treadle env`` (None when available)."""
        return None if cls.is_available() else "no such device on this machine"

    @classmethod
    def device_count(cls) -> int:
        return 1 if cls.is_available() else 0

    @abstractmethod
    def setup_device(self, local_rank: int) -> torch.device:
        """Return the device this process trains on (and make it current)."""

    def pin_memory(self) -> bool:
        """Whether dataloaders should pin host memory for faster copies (with ``--dataloader_pin_memory``)."""
        return False

    def move_batch(self, batch: Any, device: torch.device) -> Any:
        """Put one batch (tensors in dicts, lists, tuples) on ``device``; asynchronously from pinned memory."""
        from treadle.model_io import move_to_device

        return move_to_device(batch, device, non_blocking=self.pin_memory() and bool(self.args.dataloader_pin_memory))

    def process_dataloader(self, dataloader: Any) -> Any:
        """The iterable the loop reads batches from, given the positioned loader of an epoch or an evaluation.

        XLA wraps it in a loader that uploads the next batches in the background. ``len`` and
        the sampler are read from the original loader, so the wrapper need only iterate.
        """
        return dataloader

    def step_end(self) -> None:
        """Called after each optimizer step and after each evaluation / prediction batch.

        A lazy device (XLA) compiles and runs the work traced since the last call here.
        """

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op where the device is synchronous)."""

    def empty_cache(self) -> None:
        """Release cached device memory (``torch_empty_cache_steps``)."""

    def memory_stats(self) -> dict[str, int]:
        """This process's device memory in bytes, for the ``*_mem_gpu_*`` metrics (``--skip_memory_metrics false``).

        Keys: ``allocated`` (held by tensors now) and ``peak`` (the most held since the last
        ``reset_peak_memory_stats``). Empty (the default) where the device has no memory of its own
        to report: the CPU's is the process's memory, which the core measures itself.
        """
        return {}

    def reset_peak_memory_stats(self) -> None:
        """Start a new peak for ``memory_stats()["peak"]`` (called when a measured stage begins)."""

    def manual_seed(self, seed: int) -> None:
        """Seed a device generator that ``torch.manual_seed`` does not reach (XLA's own); called
        where the run seeds torch (the Trainer once the device is set up, and before ``model_init``)."""

    def rng_state(self) -> dict[str, torch.Tensor]:
        """Device RNG state to keep in a checkpoint (the CPU generator is saved by the core)."""
        return {}

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``rng_state`` returned."""

    def teardown(self) -> None:
        """Free what ``setup_device`` acquired."""


class Precision(ABC):
    """How numbers are represented: autocast, gradient scaling, module conversion.

    The loop drives it in this order: ``setup(device)`` once the backend has picked the device;
    ``convert_module`` once per model, before the strategy wraps it (so an optimizer built after
    sees the converted parameters); then per step ``forward_context`` / ``backward`` /
    ``unscale_gradients`` / ``optimizer_step``, or ``skip_step`` when the NaN/Inf policy drops the
    step. With ``--fp16_full_eval`` / ``--bf16_full_eval`` a second instance, the run's *eval
    precision*, serves evaluation (see ``Trainer.eval_precision``). A sharding strategy calls
    ``agree_on_overflow`` when it sets up the model, so a loss scaler decides with every process.
    """

    name: str = ""
    scales_loss: bool = False
    """True for a precision that scales the loss (and so skips overflowing steps itself in
    ``optimizer_step``): the loop then leaves non-finite gradients to it instead of checking them."""
    compute_dtype: Optional[torch.dtype] = None
    """The dtype the forward and backward compute in, None for full precision (float32). A
    sharding strategy reads it for its mixed-precision policy (FSDP2 all-gathers the weights in
    it), an engine for its config (DeepSpeed's fp16 / bf16 sections)."""

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args
        self.device: Optional[torch.device] = None

    def setup(self, device: torch.device) -> None:
        """Learn the run's device (called by the loop once the backend chose it).

        Check here that the device can do what this precision promises and raise
        ``treadle.UsageError`` naming the combination if not, so a run never falls back to float32
        silently; create device-bound state here too (a loss scaler lives on the run's device).
        """
        self.device = device

    def convert_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """Cast or wrap the model's parameters (identity by default).

        The loop calls it once per model, before the strategy wraps the model. As an eval
        precision it must convert in place (return the same module): the model is already wrapped.
        """
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
        """Step the optimizer; return False when the step was skipped (e.g. scaler overflow).

        The loop counts a skipped step in the logged ``skipped_steps`` and does not step the
        learning-rate scheduler for it.
        """
        optimizer.step()
        return True

    def skip_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The loop dropped this step (non-finite loss, ``--nan_inf_policy skip_step``) instead of
        calling ``optimizer_step``; the gradients are discarded right after.

        A loss scaler must still count it as an overflow (lower the scale), so the policy and the
        scaler agree about which steps happened. Nothing to do by default.
        """

    def agree_on_overflow(self, reduce_max: Callable[[torch.Tensor], torch.Tensor]) -> bool:
        """Take every process's overflow into this process's decision to skip a step.

        A strategy whose processes each hold only a part of the gradients (a sharded model) calls
        this from ``setup_model``, after ``setup``: an inf in one process's part would otherwise
        skip the step and lower the scale there only, and the processes would drift apart.
        ``reduce_max(flags)`` takes a float tensor on the run's device and returns a new one,
        the elementwise maximum over the processes; it is a collective, so call it once per
        unscaling on every process (also when this process holds no gradient). A loss scaler
        passes its found-inf flags through it after unscaling, before it decides, and returns True.

        Returns whether the overflow decision is now the same on every process. The default is
        True for a precision that does not scale the loss (it never skips a step on its own) and
        False for one that does: the strategy then refuses the combination with a clear message.
        """
        return not self.scales_loss

    def log_values(self) -> dict[str, float]:
        """Numbers to log with the training loss (e.g. ``loss_scale``); read only when logging."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (and tensors) to checkpoint, e.g. the loss scale."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def scheduler_needs_metric(scheduler: Any) -> bool:
    """Whether ``scheduler.step`` wants the evaluation metric (``metric_for_best_model``).

    Such a scheduler sets ``needs_metric = True`` (the builtin ``reduce_lr_on_plateau`` does, and
    a plugin's own may): the loop steps it after each evaluation with the metric, instead of after
    each optimizer step. torch's ``ReduceLROnPlateau`` is recognised however it arrives (e.g.
    ``Trainer(optimizers=(opt, ReduceLROnPlateau(opt)))``), since its ``step`` requires the metric.
    """
    if scheduler is None:
        return False
    needs = getattr(scheduler, "needs_metric", None)
    if needs is not None:
        return bool(needs)
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    return isinstance(scheduler, ReduceLROnPlateau)


@dataclass
class CheckpointWrite:
    """What ``Strategy.save_checkpoint`` tells the core about the files it wrote.

    ``pickled`` lists the paths (relative to the checkpoint directory, ``/``-separated) of files
    that hold pickle because the strategy's engine cannot write anything else (DeepSpeed's own
    checkpoint). The manifest records them, so a reader can tell which files unpickle on load;
    loading them is an opt-in the plugin documents (see ``treadle.checkpoint.pickled_files``).
    """

    pickled: list[str] = field(default_factory=list)


@dataclass
class MicroBatch:
    """One micro-batch as this process computes it, from ``Strategy.micro_batch``.

    A strategy that splits each sequence over several processes (context parallel, sequence
    parallel) hands each of them its part of the inputs and says how the parts weigh, so the
    gradient equals that of the whole micro-batch on one process:

    ``splits`` processes share this micro-batch, each computing on its own part; the strategy
    averages their gradients together with the data-parallel replicas'. ``local_items`` and
    ``total_items`` count label items (tokens whose label is not ``-100``) in this process's part
    and in the whole micro-batch; None when the strategy does not count them. The loop turns a
    loss that is a mean over this process's part into its share of the micro-batch's mean with
    ``local_items * splits / total_items`` (uncounted parts weigh the same); a loss normalised by
    ``num_items_in_batch`` (already a share of the whole) is multiplied by ``splits``.
    """

    inputs: dict[str, Any]
    splits: int = 1
    local_items: Optional[int] = None
    total_items: Optional[int] = None

    def loss_weight(self, normalised_by_items: bool) -> float:
        """The factor on this process's loss before backward (see the class docstring)."""
        if self.splits == 1:
            return 1.0
        if normalised_by_items:
            return float(self.splits)
        if self.local_items is None or not self.total_items:
            return 1.0  # uncounted: the parts' means weigh the same
        return self.local_items * self.splits / self.total_items


class Strategy(ABC):
    """How work is spread over processes: model wrapping, collectives, state (de)sharding.

    A strategy owns the backend and the precision for the run; the loop calls ``backward``,
    ``clip_grad_norm`` and ``optimizer_step`` here so a strategy can route them (DeepSpeed's
    engine does all three itself).

    Setting up for training happens in this order (see ``Trainer._setup_for_training``)::

        wraps_model_first=True  (default, DDP, FSDP2): setup_model(model) -> the optimizer and
                                scheduler are built on the wrapped/sharded parameters ->
                                setup(wrapped, optimizer, scheduler)
        wraps_model_first=False (DeepSpeed):           optimizer and scheduler built on the plain
                                model -> setup(model, optimizer, scheduler) wraps all three at once

    The class attributes below are declared capabilities: the loop reads them once per run.
    """

    name: str = ""

    wraps_model_first: bool = True
    """Whether ``setup_model`` runs before the optimizer exists (its parameters are the final,
    possibly sharded, ones). False: ``setup`` receives the plain model with the optimizer."""

    steps_scheduler: bool = False
    """True when ``optimizer_step`` also steps the learning-rate scheduler (an engine that owns
    it); the loop then never calls ``scheduler.step()`` itself."""

    clips_gradients: bool = False
    """True when the strategy clips gradients inside its own step (from its config): the loop
    does not call ``clip_grad_norm`` and asks ``grad_norm`` for the logged norm instead."""

    num_training_steps: Optional[int] = None
    """The optimizer steps this training run will take, set by the loop just before ``setup``
    (an engine that sizes its own scheduler or buffers by the run's length reads it here)."""

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

    def setup(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> tuple[torch.nn.Module, Any, Any]:
        """Prepare model, optimizer and scheduler for training together; return all three.

        ``model`` is what ``setup_model`` returned when ``wraps_model_first`` (else the plain
        model). ``optimizer`` is None when ``creates_optimizer()`` is true; ``scheduler`` is then
        a function ``scheduler(optimizer) -> scheduler`` unless ``creates_scheduler()`` is true
        too (DeepSpeed's ``lr_scheduler`` argument takes exactly such a callable). The returned
        optimizer and scheduler are the ones the loop steps (through ``optimizer_step``).
        """
        if not self.wraps_model_first:
            model = self.setup_model(model)
        return model, self.setup_optimizer(optimizer), scheduler

    def creates_optimizer(self) -> bool:
        """Whether the strategy builds the optimizer itself (e.g. from its own config file)."""
        return False

    def creates_scheduler(self) -> bool:
        """Whether the strategy builds the learning-rate scheduler itself."""
        return False

    def compile_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Apply ``--torch_compile`` to the set-up model (override to compile per block, or raise
        ``UsageError`` for a combination the strategy cannot compile)."""
        import torch

        return torch.compile(model, backend=self.args.torch_compile_backend or "inductor", mode=self.args.torch_compile_mode)

    def model_init_context(self) -> contextlib.AbstractContextManager:
        """Context the model is built in (a task function, ``model_init``).

        A sharding strategy may create parameters on the meta device here (on every process
        but the first, say, which loads the real weights) and allocate and fill only each
        process's shards in ``setup_model``. Entered before ``setup_environment`` when it wraps
        a ``treadle train`` task: a strategy that needs the process group here (to partition
        parameters as they are created, as DeepSpeed's ZeRO-3 does) calls ``setup_environment``
        itself, which must then be safe to call again; otherwise the launcher's environment
        gives the rank.
        """
        return contextlib.nullcontext()

    def num_parameters(self, model: torch.nn.Module, trainable_only: bool = False) -> int:
        """The model's parameter count at full size, however this strategy holds the parameters.

        A strategy whose parameters are local partitions (DeepSpeed's ZeRO-3: ``numel()`` is 0)
        counts their full sizes; DTensor shards (FSDP2, tensor parallel) report theirs already.
        """
        return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The user's module inside whatever wrapper ``setup_model`` added."""
        return model

    def micro_batch(self, inputs: dict[str, Any]) -> contextlib.AbstractContextManager[MicroBatch]:
        """Context around the forward *and* backward of one training micro-batch.

        Yields the ``MicroBatch`` this process computes on. The default yields the inputs as
        they are. A strategy that splits sequences over processes overrides it: it shards the
        inputs along the sequence dimension and keeps its attention dispatch active until the
        backward has run (ring attention and all-to-all attention need both passes inside).
        Evaluation and prediction do not go through it: they compute whole sequences.
        """
        return contextlib.nullcontext(MicroBatch(inputs))

    def backward(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        self.precision.backward(loss)

    def clip_grad_norm(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
        import torch

        self.precision.unscale_gradients(optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def grad_norm(self, model: torch.nn.Module) -> Optional[torch.Tensor]:
        """The global L2 norm of the gradients (all shards, all ranks), or None without any.

        Used for the NaN/Inf check and the logged ``grad_norm`` when the loop does not clip
        (or ``clips_gradients`` is set). A sharded strategy must return the global norm.
        """
        import torch

        grads = [p.grad for p in model.parameters() if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads) if grads else None

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

    def evaluation_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` along dim 0 over the processes that evaluate different samples.

        The same as ``all_gather`` unless blocks of processes compute on the same batch (tensor,
        context or sequence parallel): then each block's predictions are taken once, from the
        data-parallel group. ``all_gather`` itself always spans every process (the loop gathers
        per-rank state with it).
        """
        return self.all_gather(tensor)

    def evaluation_gather_object(self, obj: Any) -> list[Any]:
        """``all_gather_object`` over the processes that evaluate different samples (see ``evaluation_gather``)."""
        return self.all_gather_object(obj)

    def barrier(self, name: str = "") -> None:
        """Wait until every process reaches this point."""

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """One decision for every process: true when all of them (``all``) or any of them decided true.

        The loop asks this wherever processes could disagree and must not (a non-finite loss on
        one rank skips or halts the step on every rank; a stop requested by a callback on one
        rank stops them all), so no rank waits in a collective the others left.
        """
        return bool(decision)

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

    def save_checkpoint(
        self, staging_dir: Path, model: torch.nn.Module, optimizer: Any, *, writer: bool
    ) -> Optional[CheckpointWrite]:
        """Write the model and optimizer state of a checkpoint into ``staging_dir``.

        ``model`` is the user's module (``trainer.model``; keep a reference to any wrapper or
        engine ``setup`` made). Called on every process (gathering may be collective); ``staging_dir`` is the same
        directory for all of them, and ``writer`` is true on the process that writes shared files
        (rank 0, or each node's first with ``save_on_each_node``). ``optimizer`` is None for a
        ``save_only_model`` checkpoint. The core writes everything else (scheduler, RNG, trainer
        state, plugin states), then hashes every file under ``staging_dir`` into the manifest
        and renames the directory into place, so files written here, in subdirectories too,
        are covered by the same atomic publish. The default writes the full weights as
        ``model.safetensors`` and the optimizer state as ``optimizer.json`` + ``.safetensors``
        from the writer process.
        """
        from treadle.checkpoint import write_full_state

        write_full_state(self, staging_dir, model, optimizer, writer=writer)
        return None

    def load_checkpoint(self, checkpoint_dir: Path, model: torch.nn.Module, optimizer: Any, manifest: dict[str, Any]) -> None:
        """Restore what ``save_checkpoint`` wrote (every process calls it; ``optimizer`` None
        means the weights only, e.g. ``load_best_model_at_end``). Read files through
        ``treadle.checkpoint.checkpoint_file(checkpoint_dir, manifest, name)``, which refuses a
        file the (verified) manifest does not list."""
        from treadle.checkpoint import read_full_state

        read_full_state(self, checkpoint_dir, model, optimizer, manifest)

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
    hooks like any plugin. Subclasses implement ``setup`` / ``log`` / ``finish`` (and ``fail``);
    the hook implementations below call them on the main process only, so a reporter needs no
    rank logic of its own. Override a ``treadle_on_*`` method to see more events.

    One run, opened once and closed once: ``setup`` at train begin (or at the first log outside
    training), ``finish`` at ``treadle_on_run_end`` -- after the final evaluation of ``treadle
    train``, which comes after ``train_end`` -- or ``fail`` at ``treadle_on_exception``.

    Failures: ``setup`` may raise (a clear ``UsageError`` for an unreachable server stops the run
    at its start); an exception from ``log`` during the run is one warning, training goes on and
    later logs are still attempted. ``state_dict`` / ``load_state_dict`` keep what a resume needs
    (a run id, so the resumed training continues the same remote run) in the checkpoint.
    """

    name: str = ""
    """The name users select the reporter by (``--report_to``), shown in its warnings."""
    main_process_only: bool = True

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args
        self._active = False
        self._log_failed = False

    def setup(self, args: TrainingArguments, state: Any, model: Any) -> None:
        """Open files / runs. Called once per run, at train begin (or at first log outside training)."""

    def log(self, logs: dict[str, float], step: int) -> None:
        """Write one set of metrics."""

    def finish(self) -> None:
        """Flush and close at the end of the run; must tolerate being called twice."""

    def fail(self, exception: BaseException) -> None:
        """Close a run that failed with ``exception`` (mark it failed where the service can); default ``finish``."""
        self.finish()

    def state_dict(self) -> Optional[dict[str, Any]]:
        """What a resume needs (JSON-able), stored in the checkpoint; None stores nothing."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what ``state_dict`` returned; called on resume, before ``setup``."""

    def _should_report(self, state: Any) -> bool:
        return not self.main_process_only or state.is_world_process_zero

    def _open(self, args: TrainingArguments, state: Any, trainer: Any) -> None:
        self.setup(args, state, getattr(trainer, "model", None))
        self._active = True

    @hookimpl
    def treadle_on_train_begin(self, trainer: Any, args: TrainingArguments, state: Any) -> None:
        if self._should_report(state) and not self._active:
            self._open(args, state, trainer)

    @hookimpl
    def treadle_on_log(self, trainer: Any, args: TrainingArguments, state: Any, logs: dict[str, float]) -> None:
        if not self._should_report(state):
            return
        if not self._active:
            self._open(args, state, trainer)
        try:
            self.log(logs, state.global_step)
        except Exception as exc:  # a reporter never stops the training it reports on
            self._warn_log_failure(exc)

    def _warn_log_failure(self, exc: BaseException) -> None:
        import logging

        log = logging.getLogger("treadle")
        if self._log_failed:
            log.debug("reporter %s: logging failed again: %s", self.name, exc)
            return
        self._log_failed = True
        log.warning(
            "reporter %s: logging failed (%s: %s); training goes on, what was written so far is kept "
            "(further failures of this reporter are not shown)", self.name, type(exc).__name__, exc,
        )

    @hookimpl
    def treadle_on_run_end(self) -> None:
        if self._active:
            self._active = False
            self.finish()

    @hookimpl
    def treadle_on_exception(self, exception: BaseException) -> None:
        if self._active:
            self._active = False
            self.fail(exception)

    @hookimpl
    def treadle_checkpoint_state(self) -> Optional[dict[str, Any]]:
        return self.state_dict()

    @hookimpl
    def treadle_load_checkpoint_state(self, trainer: Any, states: Any) -> None:
        saved = states.get(trainer.run_hooks.name_of(self))  # keyed by the name the run registered it under
        if saved is not None:
            self.load_state_dict(saved)


class HubSync(ABC):
    """Uploads checkpoints and the final model to a model hub (``--push_to_hub``).

    The selected hub is registered with the run's hook caller, like a reporter, and so follows
    the run: it uploads from ``treadle_on_save`` (checkpoints, held with
    ``trainer.hold_checkpoint`` until uploaded) and ``treadle_on_model_saved`` (the final
    model), waits for its uploads at ``treadle_on_train_end`` / ``treadle_on_run_end`` and stops
    at ``treadle_on_exception``. Only the main process uploads: ``Trainer.push_to_hub`` calls
    ``push`` there only, and the hook implementations check ``state.is_world_process_zero``.
    A failed upload is a warning and a line of ``summary()``, never an exception in the loop.
    """

    name: str = ""

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args
        self.trainer: Any = None

    @hookimpl
    def treadle_on_init_end(self, trainer: Any) -> None:
        """Remember the Trainer (``push`` reads its state for the model card)."""
        self.trainer = trainer

    @abstractmethod
    def push(self, folder: str, *, commit_message: str, blocking: bool = True, **options: Any) -> Any:
        """Upload ``folder`` to the repository named by the ``hub_*`` arguments.

        ``blocking=False`` returns at once; either way the return value is the upload's handle,
        whose ``wait()`` blocks until it is done. ``options`` are the plugin's own (``revision``,
        ``token``, model-card fields).
        """

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until every upload started so far is finished (at most ``timeout`` seconds);
        True when none is left."""
        return True

    def summary(self) -> list[str]:
        """Lines for the summary ``treadle train`` prints at the end: where the run was pushed,
        which uploads failed."""
        return []

    def init_repo(self, token: Optional[str] = None) -> Any:
        """Create (or find) the repository now and return its id (``Trainer.init_hf_repo``);
        uploads otherwise create it on first use."""
        from treadle.errors import UsageError

        raise UsageError(f"hub plugin {self.name!r} cannot create its repository ahead of the first upload")


class SearchBackend(ABC):
    """A hyperparameter search library (optuna, ...): samples trials, prunes, stores the study.

    ``run`` calls ``objective(trial)`` once per trial with a ``treadle.search.SearchTrial``
    (number, name, the sampled ``params``, the library's own trial as ``native``, and a
    ``reporter(value, step) -> bool`` the Trainer calls after each evaluation: return True to
    prune). ``objective`` trains and evaluates the trial and returns a ``TrialOutcome``
    (``objectives``, ``metrics``, ``pruned``). ``hp_space`` is the user's function of the native
    trial, a list of ``treadle.search.Param`` (a search space file), or None for the backend's
    default space. Return the best runs, one per direction (``[]`` when none completed).
    """

    name: str = ""

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args

    @abstractmethod
    def run(
        self, objective: Callable[[Any], Any], *, n_trials: int, directions: list[str], hp_space: Any,
        hp_name: Optional[Callable[[Any], str]], **kwargs: Any,
    ) -> list[Any]:
        """Run the search; ``kwargs`` are the backend's own options (storage, sampler, ...)."""


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
    processing_class: Any = None
    """The tokenizer / processor: saved next to the model (``save_pretrained``) when present."""
    trainer_class: Any = None
    """The Trainer subclass to run the task with (e.g. ``treadle.Seq2SeqTrainer``); default Trainer."""

