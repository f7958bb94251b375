"""Trainer: the training loop, and the steps a subclass may override.

Read it top to bottom: construction; ``train`` (prepare, epochs, optimizer steps, logging /
evaluation / saving, finish); evaluation and prediction; the overridable building blocks
(dataloaders, optimizer, scheduler, loss, steps); then callbacks, logging and saving helpers.

The loop never talks to a concrete device, precision or distribution plugin: it asks the
strategy (which owns the backend and the precision) to wrap the model and optimizer, to run
backward, to clip and to step; where neither the strategy nor its precision changes one of
these operations, the loop makes the torch call the default would end in (decided once per
run, in ``_configure_step``). Lifecycle hooks go through one ``RunHooks`` per Trainer; events
nobody implements are not called at all, and nothing in a step waits for the device unless
something is logged, checked (``--nan_inf_policy skip_step|halt``) or saved.
"""

from __future__ import annotations

import functools
import gc
import inspect
import itertools
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from treadle import checkpoint, lifecycle, optim
from treadle.batch_size_search import StartingPoint, recorded_batch_size
from treadle.callbacks import as_hook_plugin, has_hookimpls, plugin_name
from treadle.checkpoint.holds import CheckpointHolds
from treadle.components import Backend, MicroBatch, NoSyncCapable, Precision, Strategy, scheduler_needs_metric
from treadle.config import check_arguments
from treadle.data import (
    DataCollatorWithPadding,
    EvalBatchSampler,
    LengthGroupedSampler,
    RandomEpochSampler,
    build_dataloader,
    default_data_collator,
    epoch_iterator,
    forward_parameters,
    has_length,
    pads_batches,
    remove_unused_columns,
    sample_lengths,
)
from treadle.errors import TreadleError, UsageError
from treadle.evaluation import (
    EvalLoopOutput,
    EvalPrediction,
    PredictionCollector,
    PredictionOutput,
    TrainOutput,
    gather_across,
)
from treadle.events import EventDispatcher
from treadle.flow import FlowPlugin, best_metric_key, option_value
from treadle.memory import MemoryTracker
from treadle.metrics import (
    LossWindow,
    LossWindowState,
    TokenCounter,
    derived_metrics,
    metrics_table,
    speed_metrics,
    to_python_number,
    write_results,
)
from treadle.model_io import (
    InputMapper,
    accepts_loss_kwargs,
    count_items,
    decay_parameter_names,
    find_label_names,
    label_smoothed_loss,
    loss_from_outputs,
    loss_shifts_labels,
    main_input_name,
    neftune_hook,
    split_outputs,
    unwrap_compiled,
)
from treadle.output_dir import prepare_output_dir
from treadle.overflow import detector_for
from treadle.plugins import RunHooks
from treadle.randomness import seed_from_args
from treadle.selection import apply_kernels, build_components, build_hub, build_reporters
from treadle.state import TrainerControl, TrainerState
from treadle.trainer_api import SeedTrainerMethods

logger = logging.getLogger("treadle")


_RUN_LAYOUT_FIELDS = (
    "max_steps", "num_train_epochs", "logging_steps", "eval_steps", "save_steps", "train_batch_size",
    "is_local_process_zero", "is_world_process_zero",
)
"""State fields that describe this run's layout: a resume keeps them instead of the saved ones."""

_LEAN_STEP_REPLACES = ("_run_optimizer_step", "training_step", "_forward_backward", "compute_loss", "_prepare_inputs")
"""The methods ``Trainer._run_lean_step`` does the work of: a run where one of them is not the
Trainer's own (a subclass's, one set on the instance, or one patched onto the class) gets the
general step."""


@dataclass
class TrainingPlan:
    """The numbers a training run is laid out with (computed once, before the first step)."""

    dataloader: Any
    steps_per_epoch: Optional[int]
    """Optimizer steps per epoch; None for a dataset without a length."""
    max_steps: int
    num_epochs: int
    first_epoch: int = 0
    skip_batches: int = 0
    """Micro-batches of ``first_epoch`` already trained (resume)."""
    start_step: int = 0
    start_time: float = 0.0


class Trainer(SeedTrainerMethods):
    """Train, evaluate and predict with any ``torch.nn.Module`` (see the module docstring).

    Important attributes: ``model`` (the user's module), ``model_wrapped`` (what the strategy
    and ``torch.compile`` made of it; the module the loop calls), ``backend`` / ``precision`` /
    ``strategy`` (the run's components), ``run_hooks`` (the hook caller of this Trainer),
    ``state`` and ``control``.
    """

    def __init__(
        self,
        model: Optional[nn.Module] = None,
        args: Any = None,
        data_collator: Optional[Callable] = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Optional[Callable] = None,
        compute_loss_func: Optional[Callable] = None,
        compute_metrics: Optional[Callable] = None,
        callbacks: Optional[list] = None,
        optimizers: tuple[Any, Any] = (None, None),
        optimizer_cls_and_kwargs: Optional[tuple[type, dict[str, Any]]] = None,
        preprocess_logits_for_metrics: Optional[Callable] = None,
    ) -> None:
        self._constructor_inputs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if args is None:
            from treadle.args import TrainingArguments

            args = TrainingArguments(output_dir="trainer_output")
        check_arguments(args)  # plugins' adjust / validate hooks and selection checks, unless a parser ran them
        self.args = args
        _apply_log_level(args)
        _check_compile_backend(args)
        seed_from_args(args)  # before model_init, so the model's initial weights are reproducible

        components = build_components(args)
        self.backend, self.precision, self.strategy = components.backend, components.precision, components.strategy
        self.eval_precision = components.eval_precision
        """The precision of ``--fp16_full_eval`` / ``--bf16_full_eval``, or None (evaluate as trained)."""
        self.component_specs = components.specs
        self.strategy.setup_environment()
        self.backend.manual_seed(args.seed)  # a device generator torch.manual_seed does not reach (XLA's)
        self._memory = MemoryTracker(self.backend, enabled=not args.skip_memory_metrics)
        self._memory.start("init")
        for precision in (self.precision, self.eval_precision):
            if precision is not None:  # device checks and device-bound state (a loss scaler) need the device
                precision.setup(self.strategy.root_device or torch.device("cpu"))

        self.model_init = model_init
        if model is None:
            if model_init is None:
                raise UsageError("Trainer needs a model, or a model_init function that builds one")
            model = self.call_model_init()
        if not isinstance(model, nn.Module):
            raise UsageError(
                f"Trainer needs the model as a torch.nn.Module, got {type(model).__module__}.{type(model).__qualname__}; "
                "return the network itself (not a factory, tuple or dict) from the task or model_init"
            )
        self.model = model
        self.model_wrapped = model
        self._strategy_module: nn.Module = model
        self._wrapped_for: Optional[nn.Module] = None
        self._converted_for: Optional[nn.Module] = None
        self._full_eval_for: Optional[nn.Module] = None
        self._adopt_model(model)

        self.processing_class = processing_class
        if data_collator is None:  # a tokenizer / feature extractor pads (transformers' default too)
            data_collator = DataCollatorWithPadding(processing_class) if pads_batches(processing_class) else default_data_collator
        self.data_collator = data_collator
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.compute_loss_func = compute_loss_func
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self._check_label_names(model)

        self.optimizer, self.lr_scheduler = optimizers
        self._user_optimizer, self._user_scheduler = optimizers
        if optimizer_cls_and_kwargs is not None and self.optimizer is not None:
            raise UsageError("pass either optimizers=(optimizer, scheduler) or optimizer_cls_and_kwargs, not both")
        self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs

        self._train_batch_size = args.per_device_train_batch_size
        self.state = TrainerState(
            is_local_process_zero=self.is_local_process_zero(), is_world_process_zero=self.is_world_process_zero()
        )
        self.control = TrainerControl()
        self.is_in_train = False
        self._trial: Any = None
        self.train_dataloader: Any = None
        self.eval_dataloader: Any = None
        self.hub: Any = None
        self.checkpoint_holds = CheckpointHolds()  # checkpoints a plugin still reads: rotation skips them
        self._newest_checkpoint: Optional[Path] = None
        self._persistent_loaders: dict[int, tuple[Any, Any]] = {}
        self._neftune_handle: Any = None

        self._configure_step()
        self.run_hooks = RunHooks()
        self._events = EventDispatcher(self.run_hooks)
        self._callbacks: list[tuple[object, object]] = []
        self._register_run_plugins(callbacks or [])
        self._memory.stop("init", {})  # reported with the first training's metrics
        self._event("init_end")

    def _adopt_model(self, model: nn.Module) -> None:
        """Learn what the loop needs to know about a (new) model."""
        self.label_names = list(self.args.label_names) if self.args.label_names is not None else find_label_names(model)
        if not hasattr(self, "model_accepts_loss_kwargs") or self.model_accepts_loss_kwargs is None:
            self.model_accepts_loss_kwargs = accepts_loss_kwargs(model)
        self._input_mapper = InputMapper(model)
        self._labels_shift = loss_shifts_labels(model)  # a causal LM: label position 0 is never a target
        self._set_device(self.strategy.root_device)
        if getattr(self, "_overflow_detector", None) is not None:
            self._overflow_detector.remove()
        self._overflow_detector = detector_for(model, self.args.debug)  # --debug underflow_overflow
        apply_kernels(self.args, unwrap_compiled(model))  # --use_liger_kernel: a kernel plugin patches the model

    def _set_device(self, device: Optional[torch.device]) -> None:
        self._device = device or torch.device("cpu")
        self._inputs_to_device = self.backend.places_batches

    def _register_run_plugins(self, callbacks: list) -> None:
        """Flow plugin first (and ``tryfirst``), then the selected components, reporters and hub, then the user's callbacks.

        A backend, precision or strategy with ``treadle_*`` hookimpls receives lifecycle and
        checkpoint hooks like any plugin (registered as ``<kind>:<name>``).
        """
        self.run_hooks.register(FlowPlugin(), name="treadle:flow")
        self.run_hooks.register(LossWindowState(lambda: self._loss_window), name=LossWindowState.name)
        components = {"backend": self.backend, "precision": self.precision, "strategy": self.strategy}
        for kind, component in components.items():
            if has_hookimpls(component):
                self.run_hooks.register(component, name=f"{kind}:{self.component_specs[kind].name}")
        for name, reporter in build_reporters(self.args):
            self._register_callback(reporter, f"reporter:{name}")
        self.hub = build_hub(self.args)
        if self.hub is not None and has_hookimpls(self.hub):
            self._register_callback(self.hub, "hub")
        for callback in callbacks:
            self.add_callback(callback)

    # =========================================================================================
    # Training
    # =========================================================================================

    def train(
        self,
        resume_from_checkpoint: Union[str, bool, None] = None,
        trial: Any = None,
        ignore_keys_for_eval: Optional[list[str]] = None,
    ) -> TrainOutput:
        """Train the model; ``resume_from_checkpoint`` is a checkpoint path, or True for the newest one."""
        prepare_output_dir(self.args.output_dir)  # a bad --output_dir fails now, not at the first save
        self._memory.start("train")
        self.is_in_train = True
        try:
            lifecycle.ensure_environment(self)  # a previous run's end tore the strategy down
            if self.model_init is not None:
                seed_from_args(self.args, self.backend)
                self._replace_model(self.call_model_init(trial))
            run = functools.partial(
                self._inner_training_loop, resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                ignore_keys_for_eval=ignore_keys_for_eval,
            )
            if self.args.auto_find_batch_size:
                return self._with_batch_size_search(run, resume_from_checkpoint)
            return run(batch_size=self._train_batch_size)
        except BaseException as exc:  # KeyboardInterrupt too: reporters mark the run failed, teardown runs
            lifecycle.fail_run(self, exc)
            raise
        finally:
            self.is_in_train = False
            self._remove_neftune()
            self._memory.forget("train")  # a failed run leaves no stage open

    def _inner_training_loop(
        self, batch_size: int, resume_from_checkpoint: Any, trial: Any, ignore_keys_for_eval: Optional[list[str]]
    ) -> TrainOutput:
        self._train_batch_size = batch_size
        plan = self._prepare_training(resume_from_checkpoint, trial)
        self._event("train_begin")
        lifecycle.open_run(self)
        if self.args.eval_on_start:
            self._evaluate_during_training(ignore_keys_for_eval, step_plateau_scheduler=False)
        for epoch in range(plan.first_epoch, plan.num_epochs):
            skip = plan.skip_batches if epoch == plan.first_epoch else 0
            self._train_epoch(epoch, plan, skip, ignore_keys_for_eval)
            if self.control.should_training_stop:
                break
        return self._finish_training(plan)

    # -- phase 1: prepare ------------------------------------------------------------------------

    def _prepare_training(self, resume_from_checkpoint: Any, trial: Any) -> TrainingPlan:
        """Dataloader, step counts, state, wrapped model, optimizer, scheduler; then resume."""
        args = self.args
        self.train_dataloader = self.get_train_dataloader()
        plan = self._plan_training(self.train_dataloader)
        self.state = self._fresh_state(plan, trial)
        self.control._new_training()

        self._enable_gradient_checkpointing()
        config = getattr(self.model, "config", None)
        if config is not None and hasattr(config, "use_cache"):
            config.use_cache = bool(args.use_cache)  # a key/value cache only costs memory while training
        model = self._setup_for_training(plan.max_steps)
        self._configure_step()

        if resume_from_checkpoint not in (None, False):
            self._resume(resume_from_checkpoint, plan)
        plan.first_epoch, plan.skip_batches = self._resume_position(plan)
        plan.start_step = self.state.global_step
        if self._loss_window.logged_step is None:  # else the checkpoint restored it, with the losses since
            self._loss_window.logged_step = self.state.global_step
        self._log_training_plan(plan)
        model.train()
        self._switch_optimizer_mode("train")
        plan.start_time = time.perf_counter()
        if args.neftune_noise_alpha:
            self._neftune_handle = self._activate_neftune(args.neftune_noise_alpha)
        return plan

    def _setup_for_training(self, num_training_steps: int) -> nn.Module:
        """Model, optimizer and scheduler through the strategy, in the order it asks for.

        ``wraps_model_first`` strategies wrap (or shard) the model before the optimizer is built
        on its parameters; the others get the plain model with the optimizer. Either way one
        ``Strategy.setup`` call sees all three (see ``treadle.components.Strategy``).
        """
        strategy = self.strategy
        strategy.num_training_steps = num_training_steps
        self._convert_model()
        model = self._setup_model(compiled=False) if strategy.wraps_model_first else self.model
        if self.optimizer is None and strategy.creates_optimizer():
            optimizer, scheduler = None, self.lr_scheduler
            if scheduler is None and not strategy.creates_scheduler():
                scheduler = functools.partial(self.create_scheduler, num_training_steps)  # called with the optimizer
        else:
            self.create_optimizer_and_scheduler(num_training_steps=num_training_steps)
            optimizer, scheduler = self.optimizer, self.lr_scheduler
        wrapped, self.optimizer, self.lr_scheduler = strategy.setup(model, optimizer, scheduler)
        self._adopt_wrapped(wrapped)
        return self.model_wrapped

    def _plan_training(self, dataloader: Any) -> TrainingPlan:
        """Steps per epoch, total steps and epochs, from the data and ``num_train_epochs`` / ``max_steps``."""
        args = self.args
        accumulation = args.gradient_accumulation_steps
        if has_length(dataloader):
            num_batches = len(dataloader)
            if num_batches == 0:
                raise UsageError(
                    "the training dataloader yields no batch (empty dataset, or fewer samples than "
                    "one batch with --dataloader_drop_last)"
                )
            steps_per_epoch = math.ceil(num_batches / accumulation)
            if args.max_steps > 0:
                max_steps = args.max_steps
                num_epochs = math.ceil(max_steps / steps_per_epoch)
            else:
                max_steps = math.ceil(args.num_train_epochs * steps_per_epoch)
                num_epochs = math.ceil(args.num_train_epochs)
            return TrainingPlan(dataloader, steps_per_epoch, max_steps, num_epochs)
        if args.max_steps > 0:
            return TrainingPlan(dataloader, None, args.max_steps, sys.maxsize)
        raise UsageError(
            "the training dataset has no length (it is iterable), so num_train_epochs cannot be turned "
            "into a number of steps: set --max_steps"
        )

    def _fresh_state(self, plan: TrainingPlan, trial: Any) -> TrainerState:
        state = TrainerState(
            max_steps=plan.max_steps,
            num_train_epochs=plan.num_epochs if plan.steps_per_epoch else 0,
            train_batch_size=self._train_batch_size,
            is_local_process_zero=self.is_local_process_zero(),
            is_world_process_zero=self.is_world_process_zero(),
            trial_params=dict(trial) if isinstance(trial, dict) else _trial_params(trial),
            trial_name=getattr(trial, "name", None) if trial is not None and not isinstance(trial, dict) else None,
        )
        state.set_intervals(self.args, plan.max_steps)
        self._trial = trial
        return state

    def _configure_step(self) -> None:
        """Decide once what each optimizer step must do, so the step itself only branches on flags."""
        args = self.args
        self._loss_window = LossWindow(filter_non_finite=bool(args.logging_nan_inf_filter))
        self._grad_norm: Optional[torch.Tensor] = None
        self._max_grad_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None
        accumulating = args.gradient_accumulation_steps > 1
        self._fused_backward = self._fused_backward_of(self.optimizer, accumulating)
        if self._fused_backward is not None:
            self._max_grad_norm = None  # the optimizer clips inside fused_backward; no gradient is left after it
        self._no_sync = self.strategy.no_backward_sync if accumulating and isinstance(self.strategy, NoSyncCapable) else None
        self._scheduler_per_step = (
            self.lr_scheduler is not None and not scheduler_needs_metric(self.lr_scheduler) and not self.strategy.steps_scheduler
        )
        self._step_lr: Optional[float] = None  # the rate the last optimizer step used (the scheduler has moved on)
        # a strategy that steps the scheduler inside optimizer_step: note the rate before it moves
        self._lr_before_step = bool(self.strategy.steps_scheduler) and self.lr_scheduler is not None
        self._norm_after_step = bool(self.strategy.clips_gradients)
        if self._norm_after_step:
            self._max_grad_norm = None  # the strategy clips inside its own step and reports the norm
        self._nan_policy = option_value(getattr(args, "nan_inf_policy", "warn")) or "warn"
        self._past_index = args.past_index if args.past_index >= 0 else None
        self._past: Any = None  # past_index: the model output fed back as ``mems`` on the next batch
        self._precision_scales_loss = bool(self.precision.scales_loss)
        # Where neither the strategy nor its precision changes a step operation, the loop makes the
        # torch call their defaults end in, instead of two or three calls through them per step
        # (fp32 needs no forward context at all).
        strategy_own = functools.partial(_overrides, self.strategy, base=Strategy)
        precision_own = functools.partial(_overrides, self.precision, base=Precision)
        self._forward_context = self.precision.forward_context if precision_own("forward_context") else None
        if _overrides(self, "compute_loss_context_manager", SeedTrainerMethods) or _overrides(
            self, "autocast_smart_context_manager", SeedTrainerMethods
        ):
            self._forward_context = self.compute_loss_context_manager  # a subclass's own context (seeds' API)
        self._torch_backward = not (strategy_own("backward") or precision_own("backward"))
        self._micro_batch = self.strategy.micro_batch if strategy_own("micro_batch") else None
        self._torch_clip = not (strategy_own("clip_grad_norm") or precision_own("unscale_gradients"))
        self._torch_step = not (strategy_own("optimizer_step") or precision_own("optimizer_step"))
        self._torch_zero_grad = not strategy_own("zero_grad")
        backend_own = functools.partial(_overrides, self.backend, base=Backend)
        self._step_end = self.backend.step_end if backend_own("step_end") else None
        self._process_loader = self.backend.process_dataloader if backend_own("process_dataloader") else None
        self._skipped_in_window = 0
        self._skipped_total = 0
        self._empty_cache_every = args.torch_empty_cache_steps or 0
        self._weight_micro_batches = self.compute_loss_func is None and not (
            self.model_accepts_loss_kwargs and not args.label_smoothing_factor
        )
        self._average_tokens = bool(getattr(args, "average_tokens_across_devices", False)) and self.strategy.world_size > 1
        # processes that compute on the same batch (a tensor / context / sequence parallel block):
        # counts summed over all processes are divided by it, and gradients are averaged over the
        # data-parallel replicas (times the sequence splits a MicroBatch reports), not the world
        self._replicas = self.strategy.shard_info()[0]
        self._batch_sharers = max(1, self.strategy.world_size // max(1, self._replicas))
        # a loss normalised by num_items_in_batch is normalised by every process's items, one micro-batch or several
        self._items_across_processes = self._average_tokens and (
            self.model_accepts_loss_kwargs or self.compute_loss_func is not None
        )
        self._tokens = TokenCounter(option_value(args.include_num_input_tokens_seen))
        self._count_flos = hasattr(unwrap_compiled(self.model), "floating_point_ops") or (
            type(self).floating_point_ops is not Trainer.floating_point_ops
        )
        self._track_inputs = self._count_flos or self._tokens.enabled
        # Overrides written for older signatures (without num_items_in_batch) keep working.
        self._step_takes_items = _accepts(self.training_step, "num_items_in_batch")
        self._loss_takes_items = _accepts(self.compute_loss, "num_items_in_batch")
        self._lean_step = self._can_step_lean()

    def _can_step_lean(self) -> bool:
        """Whether ``_run_lean_step`` does all an optimizer step must do in this run.

        It does: one micro-batch per step through the Trainer's own ``training_step`` /
        ``compute_loss`` (the model's loss), and the torch calls for backward, clipping, the
        optimizer step and zero_grad (neither strategy nor precision changes them). Anything
        else (accumulation, counting inputs, a NaN check, a loss computed outside the model, a
        strategy's micro-batch context, a forward context, mems, an override) takes the general
        ``_run_optimizer_step``.
        """
        cls = type(self)
        return (
            self.args.gradient_accumulation_steps == 1
            and not self._items_across_processes
            and not self._track_inputs
            and self._nan_policy == "warn"
            and self._fused_backward is None
            and self._torch_backward and self._torch_clip and self._torch_step and self._torch_zero_grad
            and not self._norm_after_step and not self._lr_before_step
            and self._micro_batch is None
            and self._forward_context is None
            and self._past_index is None
            and self.compute_loss_func is None and not self.args.label_smoothing_factor
            and all(getattr(cls, name) is method and name not in vars(self) for name, method in _LEAN_STEP_ORIGINALS.items())
        )

    def _fused_backward_of(self, optimizer: Any, accumulating: bool) -> Optional[Callable[[torch.Tensor, float], None]]:
        """``optimizer.fused_backward`` for optimizers that update during backward (LOMO, AdaLomo).

        Such an optimizer replaces backward + step: it takes the loss and the learning rate and
        updates each parameter as soon as its gradient exists, so no gradient survives to be
        accumulated, clipped or checked afterwards.
        """
        fused = getattr(optimizer, "fused_backward", None)
        if not callable(fused):
            return None
        name = type(optimizer).__name__
        if accumulating:
            raise UsageError(
                f"{name} updates the weights during backward (fused_backward), so it cannot accumulate gradients: "
                "set --gradient_accumulation_steps 1 (raise the batch size instead)"
            )
        if option_value(getattr(self.args, "nan_inf_policy", "warn")) not in ("warn", None):
            raise UsageError(
                f"{name} updates the weights during backward (fused_backward), before a non-finite loss or "
                "gradient could be noticed, so the step cannot be skipped or held back: use --nan_inf_policy warn"
            )
        # torch's schedulers warn on their first step unless step() ran; here fused_backward is the step
        optimizer._opt_called = True
        return fused

    def _switch_optimizer_mode(self, mode: str) -> None:
        """Call ``optimizer.train()`` / ``optimizer.eval()`` on optimizers that have them.

        Schedule-free optimizers keep the weights at a point suited to taking steps while training
        and swap in their averaged weights for evaluation and saving the final model.
        """
        switch = getattr(self.optimizer, mode, None)
        if callable(switch):
            switch()

    def _log_training_plan(self, plan: TrainingPlan) -> None:
        logger.info(
            "training: %s examples, %s epochs, %d steps (batch %d per device, %d per step), %d trainable parameters%s",
            self.num_examples(plan.dataloader) if has_length(plan.dataloader) else "?",
            plan.num_epochs if plan.steps_per_epoch else "?", plan.max_steps, self._train_batch_size,
            self.get_total_train_batch_size(), self.get_num_trainable_parameters(),
            f"; resuming at step {plan.start_step}" if plan.start_step else "",
        )

    def _resume(self, resume_from_checkpoint: Any, plan: TrainingPlan) -> None:
        """Restore everything from a checkpoint; keep this run's own layout values."""
        path = checkpoint.resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir, self.args)
        if path is None:
            logger.info("no checkpoint to resume from in %s; starting from scratch", self.args.output_dir)
            return
        layout = {name: getattr(self.state, name) for name in _RUN_LAYOUT_FIELDS}
        checkpoint.load_checkpoint(self, path)
        for name, value in layout.items():
            setattr(self.state, name, value)
        logger.info("resumed from %s at step %d", path, self.state.global_step)

    def _resume_position(self, plan: TrainingPlan) -> tuple[int, int]:
        """``(first epoch, micro-batches of it to skip)`` for the restored ``global_step``."""
        step = self.state.global_step
        if step == 0:
            return 0, 0
        if step >= plan.max_steps:  # a finished run: no epoch is left, not even part of one
            logger.info("the checkpoint is at step %d of %d: there is nothing left to train", step, plan.max_steps)
            return plan.num_epochs, 0
        accumulation = self.args.gradient_accumulation_steps
        if plan.steps_per_epoch is None:
            return 0, 0 if self.args.ignore_data_skip else step * accumulation
        epochs_trained = step // plan.steps_per_epoch
        if self.args.ignore_data_skip:
            return epochs_trained, 0
        return epochs_trained, (step % plan.steps_per_epoch) * accumulation

    # -- phase 2: epochs and optimizer steps -----------------------------------------------------

    def _train_epoch(self, epoch: int, plan: TrainingPlan, skip_batches: int, ignore_keys_for_eval: Any) -> None:
        state, control = self.state, self.control
        accumulation = self.args.gradient_accumulation_steps
        batches = epoch_iterator(plan.dataloader, epoch, skip_batches)
        if self._process_loader is not None:
            batches = iter(self._process_loader(batches))  # one pass: groups of micro-batches share it
        control._new_epoch()
        self._past = None  # past_index: every epoch starts without mems
        step_in_epoch = skip_batches // accumulation
        if plan.steps_per_epoch:  # where this epoch starts: 0.0 for the first, the resume point after a resume
            state.epoch = epoch + step_in_epoch / plan.steps_per_epoch
        elif state.epoch is None:
            state.epoch = float(epoch)
        self._event("epoch_begin")
        steps_done = 0
        agree_every_step = self._stop_may_differ_per_step()
        # Decided once per epoch: which step to run, and what the loop looks up every step. The
        # dispatcher refreshes ``callers`` in place, so a callback added mid-epoch is still called.
        run_step = self._run_lean_step if self._lean_step else self._run_optimizer_step
        callers, step_end, empty_cache_every = self._events.callers, self._step_end, self._empty_cache_every
        steps_per_epoch = plan.steps_per_epoch
        for micro_batches in _groups_of(batches, accumulation):
            caller = callers["step_begin"]
            if caller is not None:
                caller(self, self.args, state, control, {})
            run_step(micro_batches)
            if step_end is not None:
                step_end()
            step_in_epoch += 1
            steps_done += 1
            state.global_step += 1
            state.epoch = epoch + step_in_epoch / steps_per_epoch if steps_per_epoch else float(epoch)
            if empty_cache_every and state.global_step % empty_cache_every == 0:
                self.backend.empty_cache()
            caller = callers["step_end"]
            if caller is not None:
                caller(self, self.args, state, control, {})
            if control.should_log or control.should_evaluate or control.should_save:
                self._maybe_log_save_evaluate(ignore_keys_for_eval)
                if self.strategy.world_size > 1:
                    self._agree_on_stop()  # early stopping and other on_evaluate / on_log / on_save decisions
            elif agree_every_step:
                self._agree_on_stop()
            if control.should_epoch_stop or control.should_training_stop:
                break
        if plan.steps_per_epoch is None:
            state.epoch = float(epoch + 1)
            if steps_done == 0:
                logger.warning("the training data ran out before max_steps (%d); stopping", state.max_steps)
                control.should_training_stop = True
        self._event("epoch_end")
        self._maybe_log_save_evaluate(ignore_keys_for_eval)
        if self.strategy.world_size > 1:
            self._agree_on_stop()

    def _stop_may_differ_per_step(self) -> bool:
        """Whether a callback sees every step, and so could ask one process to stop while the
        others go on (then the ranks agree after each step).

        The core's flow decides the same on every rank, reporters only report, and the run's
        components (backend, precision, strategy) steer through their contracts; without a
        callback with a per-step hook, agreeing after each log / evaluation / save and each
        epoch is enough, and a step costs no extra collective.
        """
        if self.strategy.world_size == 1:
            return False
        step_events = ("step_begin", "substep_end", "pre_optimizer_step", "optimizer_step", "step_end")
        names = {impl.plugin_name for event in step_events for impl in self.run_hooks.impls(f"treadle_on_{event}")}
        trusted = ("treadle:", "reporter:", "backend:", "precision:", "strategy:")
        return any(not name.startswith(trusted) for name in names)

    def _agree_on_stop(self) -> None:
        """A stop asked for on one process stops every process; otherwise the others would wait
        forever in the next step's collectives for the one that left. Both flags in one collective."""
        control = self.control
        flags = torch.tensor([control.should_training_stop, control.should_epoch_stop], dtype=torch.int32, device=self._device)
        training_stop, epoch_stop = self.strategy.all_reduce(flags, op="max").tolist()
        control.should_training_stop, control.should_epoch_stop = bool(training_stop), bool(epoch_stop)

    def _run_optimizer_step(self, micro_batches: Sequence[Any]) -> None:
        """Forward and backward over the micro-batches of one step, then clip, check and step."""
        model = self.model_wrapped
        num_items = None
        if len(micro_batches) > 1 or self._items_across_processes:
            micro_batches = [self._prepare_inputs(b) for b in micro_batches]
            num_items = self._items_in_step(micro_batches)
        check = self._nan_policy != "warn"
        step_loss = None
        last = len(micro_batches) - 1
        items = (num_items,) if self._step_takes_items else ()  # an override may not take num_items_in_batch
        for i, inputs in enumerate(micro_batches):
            if self._track_inputs:
                self._count_inputs(inputs)
            if i < last and self._no_sync is not None:
                with self._no_sync(model, True):
                    loss = self.training_step(model, inputs, *items)
            else:
                loss = self.training_step(model, inputs, *items)
            self._loss_window.add(loss)
            if check:
                step_loss = loss if step_loss is None else step_loss + loss
            if i < last:
                self._event("substep_end")
        max_norm = self._max_grad_norm
        if max_norm is not None and self._torch_clip:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        elif max_norm is not None:
            self._grad_norm = self.strategy.clip_grad_norm(model, self.optimizer, max_norm)
        if check and not self._step_is_finite(step_loss):
            self._drop_non_finite_step(step_loss)
            return
        self._event("pre_optimizer_step")
        if self._lr_before_step:
            self._step_lr = self.optimizer.param_groups[0]["lr"]
        if self._torch_step and self._fused_backward is None:
            self.optimizer.step()
            stepped = True
        else:
            stepped = self._fused_backward is not None or self.strategy.optimizer_step(self.optimizer, model)
            if not stepped:  # the precision skipped it (a loss scaler's overflow): counted like a dropped step
                self._skipped_in_window += 1
                self._skipped_total += 1
        if self._norm_after_step:
            self._grad_norm = self.strategy.grad_norm(model)
        self._event("optimizer_step")
        if self._scheduler_per_step:
            self._step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used, for the log
            if stepped:
                self.lr_scheduler.step()
        if self._torch_zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.strategy.zero_grad(self.optimizer)

    def _run_lean_step(self, micro_batches: Sequence[Any]) -> None:
        """``_run_optimizer_step`` in one frame, for runs where ``_can_step_lean`` holds.

        The same operations in the same order, and the same events when someone listens; only
        the calls and checks that cannot apply in such a run are left out (on a small model
        they are a few percent of a step).
        """
        inputs = micro_batches[0]
        if self._inputs_to_device or not isinstance(inputs, dict):
            inputs = self._prepare_inputs(inputs)
        model = self.model_wrapped
        outputs = model(**inputs)
        if isinstance(outputs, torch.Tensor) and outputs.dim() == 0:
            loss = outputs
        else:
            loss = loss_from_outputs(outputs, inputs, self.label_names)
        loss.backward()
        self._loss_window.add(loss.detach())
        if self._max_grad_norm is not None:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self._max_grad_norm)
        callers = self._events.callers
        caller = callers["pre_optimizer_step"]
        if caller is not None:
            caller(self, self.args, self.state, self.control, {})
        optimizer = self.optimizer
        optimizer.step()
        caller = callers["optimizer_step"]
        if caller is not None:
            caller(self, self.args, self.state, self.control, {})
        if self._scheduler_per_step:
            self._step_lr = optimizer.param_groups[0]["lr"]  # the rate this step used, for the log
            self.lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def _items_in_step(self, micro_batches: list[dict[str, Any]]) -> Any:
        """Items the whole accumulated batch averages over (so its loss equals one big batch's)."""
        total = sum(count_items(b, self.label_names, self._labels_shift) for b in micro_batches)
        if self._average_tokens and (self.model_accepts_loss_kwargs or self.compute_loss_func is not None):
            total = self.strategy.all_reduce(torch.as_tensor(total, device=self._device), op="sum")
            if self._batch_sharers > 1:  # each batch was counted once per process of its block
                total = total // self._batch_sharers
        return total

    # -- NaN / Inf policy (only --nan_inf_policy skip_step|halt pay for a host sync per step) --

    def _step_is_finite(self, step_loss: torch.Tensor) -> bool:
        """Whether the step's loss and gradient norm are finite on every process (then all step, or none)."""
        values = [step_loss.detach().float().reshape(1)]
        if not self._precision_scales_loss:  # a loss scaler skips overflowing steps by itself
            norm = self._grad_norm if self._max_grad_norm is not None else self._gradient_norm()
            if norm is not None:
                values.append(norm.detach().float().reshape(1).to(values[0].device))
        return self.strategy.reduce_boolean_decision(bool(torch.isfinite(torch.cat(values)).all()), all=True)

    def _gradient_norm(self) -> Optional[torch.Tensor]:
        return self.strategy.grad_norm(self.model_wrapped)  # global: a sharded model's local norm would mislead

    def _drop_non_finite_step(self, step_loss: torch.Tensor) -> None:
        step = self.state.global_step + 1
        loss = float(step_loss)
        if self._nan_policy == "halt":
            self.strategy.zero_grad(self.optimizer)
            self.log({"loss": loss, "non_finite_step": step})
            raise TreadleError(
                f"training halted at step {step} (epoch {self.state.epoch or 0:.2f}): the loss ({loss}) or the "
                f"gradient norm is not finite, and --nan_inf_policy is halt. The weights were not updated "
                f"with it and nothing was saved after step {step - 1}, so the newest checkpoint is intact. "
                "Try a lower --learning_rate, gradient clipping (--max_grad_norm 1.0), or "
                "--nan_inf_policy skip_step to drop such steps."
            )
        logger.warning("step %d: non-finite loss (%s) or gradient; the optimizer step is skipped (--nan_inf_policy skip_step)", step, loss)
        self.precision.skip_step(self.optimizer)  # a loss scaler lowers its scale for it, as for an overflow
        self.strategy.zero_grad(self.optimizer)
        self._step_lr = None  # the rate did not move: the current one is what this step would have used
        self._skipped_in_window += 1
        self._skipped_total += 1

    # -- phase 3: log, evaluate, save when control asks -----------------------------------------

    def _maybe_log_save_evaluate(self, ignore_keys_for_eval: Optional[list[str]] = None) -> None:
        control = self.control
        if not (control.should_log or control.should_evaluate or control.should_save):
            return
        self._sync_counters()
        if control.should_log:
            self._log_training_progress()
        metrics = None
        if control.should_evaluate:
            metrics = self._evaluate_during_training(ignore_keys_for_eval)
        if control.should_save:
            self._save_checkpoint(metrics)
        control.should_log = control.should_evaluate = control.should_save = False

    def _log_training_progress(self) -> None:
        steps = self.state.global_step - self._loss_window.logged_step
        if steps <= 0:
            return
        reading = self._loss_window.read(steps, self.strategy)  # the mean over all processes
        logs: dict[str, float] = {"loss": reading.loss}
        if self._grad_norm is not None:
            logs["grad_norm"] = float(self._grad_norm)
        logs["learning_rate"] = float(self._step_lr) if self._step_lr is not None else self._current_learning_rate()
        if reading.non_finite:
            logs["non_finite_losses"] = reading.non_finite
            self._warn_non_finite(f"{reading.non_finite} micro-batch loss(es) in the last {steps} step(s) were NaN or Inf")
        if "grad_norm" in logs and not math.isfinite(logs["grad_norm"]) and not self._precision_scales_loss:
            self._warn_non_finite(f"the gradient norm is {logs['grad_norm']}")  # (a loss scaler reports its overflows itself)
        if self._skipped_in_window:
            logs["skipped_steps"] = self._skipped_in_window
            self._skipped_in_window = 0
        logs.update(self.precision.log_values())  # e.g. the loss scale
        self._loss_window.logged_step = self.state.global_step
        self.log(logs)

    def _warn_non_finite(self, what: str) -> None:
        if self._nan_policy == "warn":
            logger.warning("step %d: %s (--nan_inf_policy warn: training goes on)", self.state.global_step, what)

    def _evaluate_during_training(self, ignore_keys: Optional[list[str]], step_plateau_scheduler: bool = True) -> dict[str, float]:
        metrics = self.evaluate(ignore_keys=ignore_keys)
        if self.args.metric_for_best_model:
            checkpoint.update_best_metric(self.args, self.state, metrics)
        if step_plateau_scheduler and scheduler_needs_metric(self.lr_scheduler):
            key = best_metric_key(self.args)
            if key not in metrics:
                raise UsageError(
                    f"lr_scheduler_type {self.args.lr_scheduler_type} steps on {key!r}, which evaluation did not "
                    f"return (it returned {', '.join(metrics)}); set --metric_for_best_model"
                )
            self.lr_scheduler.step(metrics[key])
        report = getattr(self._trial, "report_metrics", None)  # a hyperparameter search trial: it may be pruned
        if report is not None and report(metrics, self.state.global_step):
            logger.info("trial %s pruned at step %d by the search backend", self.state.trial_name, self.state.global_step)
            self.control.should_training_stop = True
        self.model_wrapped.train()
        self._switch_optimizer_mode("train")
        return metrics

    def _save_checkpoint(self, metrics: Optional[dict[str, float]]) -> None:
        checkpoint_dir = checkpoint.save_checkpoint(self, metrics, rotate=False)
        self._newest_checkpoint = checkpoint_dir
        self._event("save", checkpoint_dir=str(checkpoint_dir))  # before rotation: a plugin may hold what it still reads
        checkpoint.rotate_after_save(self, checkpoint_dir)

    # -- phase 4: finish -------------------------------------------------------------------------

    def _finish_training(self, plan: TrainingPlan) -> TrainOutput:
        args, state = self.args, self.state
        self._sync_counters()
        self._remove_neftune()
        self._switch_optimizer_mode("eval")  # the weights a schedule-free optimizer means to be used from now on
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            checkpoint.load_best_model(self)
        remaining = state.global_step - self._loss_window.logged_step
        if remaining > 0 and self._loss_window.has_data():
            reading = self._loss_window.read(remaining, self.strategy)
            if reading.non_finite:
                self._warn_non_finite(f"{reading.non_finite} micro-batch loss(es) since the last log were NaN or Inf")
        steps_run = state.global_step - plan.start_step
        metrics = speed_metrics(
            "train", plan.start_time, num_samples=steps_run * self.get_total_train_batch_size(), num_steps=steps_run,
        )
        metrics["total_flos"] = state.total_flos
        metrics["train_loss"] = self._loss_window.mean_train_loss()
        if self._skipped_total:
            metrics["train_skipped_steps"] = self._skipped_total
        self._memory.stop("train", metrics)
        self.log(metrics)
        self._event("train_end")
        if self.checkpoint_holds.ever_held and self._newest_checkpoint is not None:
            checkpoint.rotate_after_save(self, self._newest_checkpoint)  # what was held during the last saves
        return TrainOutput(state.global_step, metrics["train_loss"], metrics)

    # -- automatic batch size --------------------------------------------------------------------

    def _with_batch_size_search(self, run: Callable[..., TrainOutput], resume_from_checkpoint: Any) -> TrainOutput:
        """``auto_find_batch_size``: on an out-of-memory error, halve the batch and start again.

        Each retry starts from the weights, optimizer / scheduler state and RNG states the first
        attempt started from (see ``treadle.batch_size_search``). A resume starts the search from
        the batch size recorded in its checkpoint.
        """
        batch_size, resume_from_checkpoint = self._search_start(resume_from_checkpoint)
        start = StartingPoint(self, self.model, self._user_optimizer, self._user_scheduler)
        while True:
            try:
                return run(batch_size=batch_size, resume_from_checkpoint=resume_from_checkpoint)
            except Exception as exc:
                if not _is_out_of_memory(exc) or batch_size <= 1:
                    raise
                batch_size //= 2
                logger.warning("out of memory; retrying with per-device batch size %d (auto_find_batch_size)", batch_size)
                self._forget_run_objects()
                start.restore()

    def _search_start(self, resume_from_checkpoint: Any) -> tuple[int, Any]:
        """The batch size to try first, and the checkpoint to resume from (resolved here, once)."""
        if resume_from_checkpoint in (None, False):
            return self._train_batch_size, resume_from_checkpoint
        path = checkpoint.resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir, self.args)
        if path is None:
            return self._train_batch_size, None
        recorded = recorded_batch_size(path, checkpoint.TRAINER_STATE_NAME)
        if recorded and recorded != self._train_batch_size:
            logger.info("auto_find_batch_size: %s was trained with %d per device; starting from that", path.name, recorded)
        return recorded or self._train_batch_size, str(path)

    def _forget_run_objects(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        self.optimizer, self.lr_scheduler = self._user_optimizer, self._user_scheduler
        self.train_dataloader = None
        gc.collect()
        self.backend.empty_cache()

    # -- hyperparameter search -------------------------------------------------------------------

    def hyperparameter_search(
        self,
        hp_space: Optional[Callable[[Any], dict[str, Any]]] = None,
        compute_objective: Optional[Callable[[dict[str, float]], Any]] = None,
        n_trials: int = 100,
        direction: Union[str, list[str]] = "minimize",
        backend: Optional[str] = None,
        hp_name: Optional[Callable[[Any], str]] = None,
        **kwargs: Any,
    ) -> Any:
        """Search hyperparameters with a search backend plugin (``treadle-optuna``).

        Each trial copies the arguments with the values ``hp_space(trial)`` draws, builds the
        model anew with ``model_init`` (required), trains in ``output_dir/run-<trial>`` and is
        scored by ``compute_objective(eval metrics)`` (default: the eval loss alone, else the sum
        of the metrics). ``direction`` is ``"minimize"``/``"maximize"`` or a list of them for
        several objectives; ``kwargs`` go to the backend (optuna: ``storage``, ``study_name``,
        ``sampler``, ``pruner``, ``timeout``, ...). Returns the ``BestRun`` (a list of them for
        several directions); ``self.search_results`` holds every trial of this call.
        """
        from treadle.search import hyperparameter_search

        return hyperparameter_search(self, hp_space, compute_objective, n_trials, direction, backend, hp_name, **kwargs)

    def for_trial(self, args: Any) -> Trainer:
        """A Trainer like this one (same data, model_init, callbacks, ...) with other arguments."""
        return type(self)(**{**self._constructor_inputs, "args": args, "model": None})

    # =========================================================================================
    # Evaluation and prediction
    # =========================================================================================

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Optional[list[str]] = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Evaluate and return the metrics (``<prefix>_loss``, the ``compute_metrics`` ones, speeds).

        A dict of datasets is evaluated set by set, each with its name in the prefix
        (``eval_<name>_loss``).
        """
        datasets = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(datasets, dict):
            metrics: dict[str, float] = {}
            for name, dataset in datasets.items():
                metrics.update(self.evaluate(dataset, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        self._memory.start("eval")
        dataloader = self.get_eval_dataloader(eval_dataset)
        start = time.perf_counter()
        output = self._inference_loop()(
            dataloader, "Evaluation", prediction_loss_only=True if self.compute_metrics is None else None,
            ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix,
        )
        batch_size = self.args.per_device_eval_batch_size * self.strategy.shard_info()[0]
        output.metrics.update(
            speed_metrics(metric_key_prefix, start, num_samples=output.num_samples,
                          num_steps=math.ceil(output.num_samples / batch_size))
        )
        self._memory.stop("eval", output.metrics)
        output.metrics.update(derived_metrics(self, output.metrics, metric_key_prefix))  # logged with the rest
        self.log(output.metrics)
        self._event("evaluate", metrics=output.metrics)
        return output.metrics

    def predict(
        self, test_dataset: Any, ignore_keys: Optional[list[str]] = None, metric_key_prefix: str = "test"
    ) -> PredictionOutput:
        """Predictions for ``test_dataset`` (numpy), its labels if it has some, and metrics."""
        self._memory.start("test")
        dataloader = self.get_test_dataloader(test_dataset)
        start = time.perf_counter()
        output = self._inference_loop()(dataloader, "Prediction", ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        batch_size = self.args.per_device_eval_batch_size * self.strategy.shard_info()[0]
        output.metrics.update(
            speed_metrics(metric_key_prefix, start, num_samples=output.num_samples,
                          num_steps=math.ceil(output.num_samples / batch_size))
        )
        self._memory.stop("test", output.metrics)
        output.metrics.update(derived_metrics(self, output.metrics, metric_key_prefix))
        self._event("predict", metrics=output.metrics)
        return PredictionOutput(output.predictions, output.label_ids, output.metrics)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: Optional[bool] = None,
        ignore_keys: Optional[list[str]] = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """The loop shared by ``evaluate`` and ``predict``; works with and without labels."""
        args = self.args
        loss_only = args.prediction_loss_only if prediction_loss_only is None else prediction_loss_only
        model = self._setup_model()
        self._convert_for_full_eval()
        model.eval()
        self._switch_optimizer_mode("eval")
        self.eval_dataloader = dataloader
        if args.jit_mode_eval:
            model = self._jit_traced(model, dataloader)
        past_of_training, self._past = self._past, None  # evaluation keeps its own mems (past_index)
        include = set(args.include_for_metrics or [])
        per_batch_metrics = bool(args.batch_eval_metrics) and self.compute_metrics is not None
        # batch_eval_metrics keeps nothing while evaluating; predict() still returns what it predicted
        keep = not per_batch_metrics or description == "Prediction"
        collected = PredictionCollector(args.eval_accumulation_steps, args.eval_do_concat_batches, keep=keep)
        num_batches = len(dataloader) if has_length(dataloader) else None
        metrics: Optional[dict[str, Any]] = None
        observed = 0
        batches = dataloader if self._process_loader is None else self._process_loader(dataloader)
        for step, batch in enumerate(batches):
            batch = self._prepare_inputs(batch)
            batch_size = _batch_size(batch)
            loss, logits, labels = self.prediction_step(model, batch, loss_only, ignore_keys=ignore_keys)
            inputs = batch.get(main_input_name(self.model, batch)) if "inputs" in include else None
            losses = None if loss is None else self._gather(loss.reshape(1).repeat(batch_size))
            logits, labels, inputs = self._gather(logits), self._gather(labels), self._gather(inputs)
            if logits is not None and self.preprocess_logits_for_metrics is not None:
                logits = self.preprocess_logits_for_metrics(logits, labels)
            collected.add(losses, logits, labels, inputs)
            if per_batch_metrics and logits is not None and labels is not None:
                is_last = num_batches is not None and step == num_batches - 1
                batch_losses = losses if "loss" in include else None
                metrics = self.compute_metrics(EvalPrediction(logits, labels, inputs, batch_losses), compute_result=is_last)
            observed += batch_size
            if self._step_end is not None:
                self._step_end()
            self._event("prediction_step", num_batches=num_batches)

        dataset = getattr(dataloader, "dataset", None)
        if self.strategy.world_size > 1:  # the ranks' last batches may differ in size: count them all
            observed = int(self.strategy.all_reduce(torch.tensor(observed, device=self._device), op="sum"))
            observed //= max(1, self.strategy.world_size // self.strategy.shard_info()[0])  # a block counted once
        num_samples = min(len(dataset), observed) if has_length(dataset) else observed
        losses, predictions, label_ids, inputs = collected.result(num_samples)
        if not per_batch_metrics and self.compute_metrics is not None and predictions is not None and label_ids is not None:
            metrics = self.compute_metrics(EvalPrediction(predictions, label_ids, inputs, losses if "loss" in include else None))
        metrics = {k: to_python_number(v) for k, v in (metrics or {}).items()}
        if losses is not None:
            metrics["loss"] = float(losses.mean())
        metrics = {k if k.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self._past = past_of_training
        return EvalLoopOutput(predictions, label_ids, metrics, num_samples)

    def _jit_traced(self, model: nn.Module, dataloader: Any) -> nn.Module:
        """``--jit_mode_eval``: the model traced with TorchScript on the first batch and frozen.

        Traced again for every evaluation (freezing bakes the current weights in). A model that
        cannot be traced is evaluated as it is, with a warning, as transformers does.
        """
        try:
            example = self._prepare_inputs(next(iter(dataloader)))
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in favour of compile
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # a model that traces badly falls back below
                traced = torch.jit.trace(model, example_kwarg_inputs=dict(example), strict=False)
                return torch.jit.freeze(traced)
        except StopIteration:
            return model
        except Exception as exc:  # TorchScript rejects many models; evaluation itself still works
            _warn_once(f"--jit_mode_eval: the model could not be traced ({type(exc).__name__}: {exc}); evaluating it as it is")
            return model

    def _gather(self, value: Any) -> Any:
        """Every process's ``value`` for this batch (shapes may differ: padded, gathered, trimmed)."""
        return gather_across(self.strategy, value, use_gather_object=bool(self.args.eval_use_gather_object))

    def prediction_step(
        self, model: nn.Module, inputs: Any, prediction_loss_only: bool, ignore_keys: Optional[list[str]] = None
    ) -> tuple[Optional[torch.Tensor], Any, Any]:
        """``(loss, logits, labels)`` for one batch; each may be None."""
        inputs = self._prepare_inputs(inputs)
        has_labels = bool(self.label_names) and all(inputs.get(name) is not None for name in self.label_names)
        if ignore_keys is None:
            config = getattr(unwrap_compiled(self.model), "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", []) or [])
        labels = None
        if has_labels:
            labels = tuple(inputs[name] for name in self.label_names)
            labels = labels[0] if len(labels) == 1 else labels
        with torch.no_grad(), (self.eval_precision or self.precision).eval_context():
            if has_labels:
                loss, outputs = self._compute_eval_loss(model, inputs)
                loss = loss.detach().mean()
                _, logits = split_outputs(outputs, has_loss=not self._loss_outside_model(), ignore_keys=ignore_keys)
            else:
                if self._past is not None:
                    inputs = {**inputs, "mems": self._past}
                outputs = model(**inputs)
                if self._past_index is not None:
                    self._past = _output_at(outputs, self._past_index)
                loss, logits = split_outputs(outputs, has_loss=False, ignore_keys=ignore_keys)
        if prediction_loss_only:
            return loss, None, None
        return loss, _detach(logits), labels

    # =========================================================================================
    # Overridable building blocks
    # =========================================================================================

    def training_step(self, model: nn.Module, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        """Forward and backward for one micro-batch; returns the (detached, weighted) loss.

        With gradient accumulation, ``num_items_in_batch`` counts the items of the whole
        accumulated batch; a mean loss is weighted by this micro-batch's share of them, so the
        accumulated gradient equals that of one large batch.
        """
        inputs = self._prepare_inputs(inputs)
        share = None
        if num_items_in_batch is not None and self._weight_micro_batches:
            share = count_items(inputs, self.label_names, self._labels_shift) / num_items_in_batch
        if self._micro_batch is not None:  # the strategy splits the micro-batch (its context spans backward)
            with self._micro_batch(inputs) as part:
                return self._forward_backward(model, part.inputs, num_items_in_batch, share, part)
        return self._forward_backward(model, inputs, num_items_in_batch, share, None)

    def _forward_backward(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any, share: Optional[float],
        part: Optional[MicroBatch],
    ) -> torch.Tensor:
        items = {"num_items_in_batch": num_items_in_batch} if self._loss_takes_items else {}
        if self._forward_context is None:
            loss = self.compute_loss(model, inputs, **items)
        else:
            with self._forward_context():
                loss = self.compute_loss(model, inputs, **items)
        if part is not None and part.splits > 1:
            weight = part.loss_weight(normalised_by_items=num_items_in_batch is not None and share is None)
            # a part without label tokens has a 0/0 mean; it weighs nothing, but its backward still runs
            loss = (torch.nan_to_num(loss, nan=0.0) if weight == 0 else loss) * weight
        if share is not None:
            loss = loss * share
        elif self._average_tokens and num_items_in_batch is not None:
            # normalised by the items of all replicas, while the strategy averages gradients over them
            loss = loss * self._replicas
        if self._fused_backward is not None:
            self._fused_backward(loss, self._current_learning_rate())  # backward and update in one pass
        elif self._torch_backward:
            loss.backward()
        else:
            self.strategy.backward(loss, model)
        return loss.detach()

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """The loss of one batch: the model's own, or ``compute_loss_func`` / label smoothing on its outputs."""
        labels = None
        if self.compute_loss_func is not None or self.args.label_smoothing_factor:  # the loss is computed here
            key = self.label_names[0] if len(self.label_names) == 1 else "labels"
            if key in inputs:
                labels = inputs[key]
                inputs = {k: v for k, v in inputs.items() if k != key}
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs and self.compute_loss_func is None:
            inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
        if self._past_index is not None:  # past_index: feed the kept output back (TransformerXL-style mems)
            if self._past is not None:
                inputs = {**inputs, "mems": self._past}
            outputs = model(**inputs)
            self._past = _output_at(outputs, self._past_index)
        else:
            outputs = model(**inputs)
        if labels is not None and self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        elif labels is not None:
            loss = label_smoothed_loss(outputs, labels, self.args.label_smoothing_factor, self._labels_shift)
        elif isinstance(outputs, torch.Tensor) and outputs.dim() == 0:
            loss = outputs  # the common case, decided without a call (this runs every micro-batch)
        else:
            loss = loss_from_outputs(outputs, inputs, self.label_names)
        return (loss, outputs) if return_outputs else loss

    def _compute_eval_loss(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        if self._loss_takes_items and not self._weight_micro_batches:
            # a loss normalised by num_items_in_batch needs the count of this batch
            items = count_items(inputs, self.label_names, self._labels_shift)
            return self.compute_loss(model, inputs, return_outputs=True, num_items_in_batch=items)
        return self.compute_loss(model, inputs, return_outputs=True)

    def _loss_outside_model(self) -> bool:
        return self.compute_loss_func is not None or bool(self.args.label_smoothing_factor)

    def _prepare_inputs(self, inputs: Any) -> dict[str, Any]:
        """A batch as the forward's keyword arguments, on the run's device."""
        if not isinstance(inputs, dict):
            inputs = self._input_mapper(inputs)
        if self._inputs_to_device:
            inputs = self.backend.move_batch(inputs, self._device)
        return inputs

    def _pin_memory(self) -> bool:
        return bool(self.args.dataloader_pin_memory) and self.backend.pin_memory()

    def _data_seed(self) -> int:
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    # -- dataloaders -----------------------------------------------------------------------------

    def get_train_dataloader(self) -> Any:
        """The training DataLoader: shuffled per epoch from ``data_seed``, resumable mid-epoch."""
        if self.train_dataset is None:
            raise UsageError("training needs a train_dataset (Trainer(train_dataset=...) or a task that returns one)")
        dataset, collator = self._dataset_and_collator(self.train_dataset, "training")
        return build_dataloader(
            dataset, batch_size=self._train_batch_size, collate_fn=collator, args=self.args,
            seed=self._data_seed(), sampler=self._get_train_sampler(self.train_dataset), pin_memory=self._pin_memory(),
        )

    def _get_train_sampler(self, dataset: Any) -> Any:
        if isinstance(dataset, torch.utils.data.IterableDataset) or not has_length(dataset):
            return None
        replicas, rank = self.strategy.shard_info()
        if self.args.group_by_length:
            lengths = sample_lengths(dataset, self.args.length_column_name, getattr(self.model, "main_input_name", "input_ids"))
            batch = self._train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(lengths, batch, seed=self._data_seed(), num_replicas=replicas, rank=rank)
        return RandomEpochSampler(len(dataset), seed=self._data_seed(), num_replicas=replicas, rank=rank)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        """The evaluation DataLoader (``eval_dataset`` may name one of a dict of eval sets)."""
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise UsageError("evaluation needs an eval_dataset (Trainer(eval_dataset=...) or evaluate(dataset))")
        return self._inference_dataloader(dataset, "evaluation")

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        """The prediction DataLoader for ``test_dataset``."""
        return self._inference_dataloader(test_dataset, "test")

    def _inference_dataloader(self, dataset: Any, description: str) -> Any:
        if self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0:
            # Keep the loader, and so its worker processes, for the next evaluation of this dataset.
            cached = self._persistent_loaders.get(id(dataset))
            if cached is None or cached[0] is not dataset:
                cached = (dataset, self._new_inference_dataloader(dataset, description))
                self._persistent_loaders[id(dataset)] = cached
            return cached[1]
        return self._new_inference_dataloader(dataset, description)

    def _new_inference_dataloader(self, dataset: Any, description: str) -> Any:
        dataset, collator = self._dataset_and_collator(dataset, description)
        batch_size = self.args.per_device_eval_batch_size
        common = {"collate_fn": collator, "args": self.args, "seed": self._data_seed(), "pin_memory": self._pin_memory()}
        if isinstance(dataset, torch.utils.data.IterableDataset) or not has_length(dataset):
            return build_dataloader(dataset, batch_size=batch_size, **common)
        replicas, rank = self.strategy.shard_info()
        batches = EvalBatchSampler(len(dataset), batch_size, self.args.dataloader_drop_last, replicas, rank)
        return build_dataloader(dataset, batch_size=batch_size, batch_sampler=batches, **common)

    def _dataset_and_collator(self, dataset: Any, description: str) -> tuple[Any, Callable]:
        if not self.args.remove_unused_columns:
            return dataset, self.data_collator
        return remove_unused_columns(dataset, self.data_collator, unwrap_compiled(self.model), self.label_names, description)

    # -- model setup -----------------------------------------------------------------------------

    def _setup_model(self, compiled: bool = True) -> nn.Module:
        """Let the strategy move and wrap the model (once per model), then compile if asked.

        ``compiled=False`` returns the strategy's module itself (what ``Strategy.setup`` gets).
        """
        if self._wrapped_for is not self.model:
            self._convert_model()
            self._adopt_wrapped(self.strategy.setup_model(self.model))
        return self.model_wrapped if compiled else self._strategy_module

    def _adopt_wrapped(self, module: nn.Module) -> None:
        """Make ``module`` (from the strategy) the one the loop calls, compiled if asked (once)."""
        if self._wrapped_for is self.model and module is self._strategy_module:
            return  # setup kept the module setup_model made: it is compiled already
        self._strategy_module = module
        self.model_wrapped = self.strategy.compile_model(module) if self.args.torch_compile else module
        self._wrapped_for = self.model
        self._set_device(self.strategy.root_device)

    def _convert_model(self) -> None:
        """The precision's ``convert_module``, once per model, before any strategy wraps it.

        Called by the loop itself (a strategy need not remember to), early enough that an optimizer
        built afterwards, in either setup order, sees the converted parameters.
        """
        if self._converted_for is not self.model:
            self.model = self.precision.convert_module(self.model)
            self._converted_for = self.model

    def _convert_for_full_eval(self) -> None:
        """``--fp16_full_eval`` / ``--bf16_full_eval`` outside training: the weights themselves go to half.

        As in transformers, an evaluation outside ``train()`` converts the model in place (once) and
        leaves it converted: that is the memory saving. Evaluations during training only run in the
        eval precision's context, so the weights being trained keep the training precision.
        """
        if self.eval_precision is None or self.is_in_train or self._full_eval_for is self.model:
            return
        if self.eval_precision.convert_module(self.model) is not self.model:
            raise UsageError(
                f"precision {self.eval_precision.name!r} cannot serve --fp16_full_eval / --bf16_full_eval: "
                "its convert_module returns a new module, and an eval precision must convert the model in place"
            )
        self._full_eval_for = self.model
        logger.info("evaluating with the weights in precision %s (full evaluation); the model stays converted", self.eval_precision.name)

    def _replace_model(self, model: nn.Module) -> None:
        self.model = self.model_wrapped = model
        self._wrapped_for = None
        self.optimizer, self.lr_scheduler = self._user_optimizer, self._user_scheduler
        self._adopt_model(model)
        self._check_label_names(model)

    def _check_label_names(self, model: nn.Module) -> None:
        """``--label_names`` must name inputs the model's forward takes (unless the loss is computed outside it)."""
        if self.args.label_names is None or self.compute_loss_func is not None or self.args.label_smoothing_factor:
            return
        names, takes_any = forward_parameters(unwrap_compiled(model))
        missing = [name for name in self.label_names if name not in names]
        if missing and not takes_any:
            raise UsageError(
                f"--label_names {' '.join(self.label_names)}: {type(model).__name__}.forward takes no argument "
                f"{', '.join(map(repr, missing))} (it takes {', '.join(names) or 'nothing'}); name the inputs that "
                "hold the labels, or leave label_names unset to find them from the model"
            )

    def _enable_gradient_checkpointing(self) -> None:
        if not self.args.gradient_checkpointing:
            return
        enable = getattr(self.model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise UsageError(
                f"--gradient_checkpointing: {type(self.model).__name__} does not support it (it has no "
                "gradient_checkpointing_enable() method); drop the flag or add the method to the model"
            )
        if "gradient_checkpointing_kwargs" in inspect.signature(enable).parameters:
            enable(gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs)
        else:
            enable()

    def _activate_neftune(self, alpha: float) -> Any:
        get_embeddings = getattr(unwrap_compiled(self.model), "get_input_embeddings", None)
        if get_embeddings is None:
            raise UsageError(
                f"--neftune_noise_alpha: {type(self.model).__name__} has no get_input_embeddings(), so there is "
                "no embedding layer to add noise to"
            )
        return get_embeddings().register_forward_hook(neftune_hook(alpha))

    def _remove_neftune(self) -> None:
        if self._neftune_handle is not None:
            self._neftune_handle.remove()
            self._neftune_handle = None

    def call_model_init(self, trial: Any = None) -> nn.Module:
        """Build a fresh model with ``model_init`` (which may take the trial as its only argument)."""
        takes_trial = len(inspect.signature(self.model_init).parameters) == 1
        with self.strategy.model_init_context():  # e.g. meta-device parameters for a sharding strategy
            model = self.model_init(trial) if takes_trial else self.model_init()
        if model is None:
            raise UsageError("model_init returned None; it must return the model")
        return model

    # -- optimizer and scheduler -----------------------------------------------------------------

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        """Create the optimizer and the scheduler unless they were given to the constructor."""
        self.create_optimizer()
        self.create_scheduler(num_training_steps=num_training_steps, optimizer=self.optimizer)

    def create_optimizer(self) -> torch.optim.Optimizer:
        """The ``--optim`` optimizer, with weight decay on every parameter but biases and norms.

        A ``"params"`` key in the factory's keyword arguments replaces those parameter groups.
        """
        if self.optimizer is None:
            model = self._optimized_module()
            groups = optim.parameter_groups(model, set(self.get_decay_parameter_names(model)), self.args.weight_decay)
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, kwargs = self.optimizer_cls_and_kwargs
                given = "optimizer_cls_and_kwargs"
            else:
                optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
                given = f"--optim {option_value(self.args.optim)} --optim_args {self.args.optim_args or ''}".rstrip()
            self.optimizer = optim.build_optimizer(optimizer_cls, kwargs, groups, given=given)
        return self.optimizer

    def _optimized_module(self) -> nn.Module:
        """The module whose parameters the optimizer steps: the user's model, unless the strategy
        wrapped it first into a module that holds parameters the model no longer has (a wrapper
        that flattens them, as XLA's FSDP does; DDP and FSDP2 keep the model's own parameters)."""
        wrapper = self._strategy_module
        if self._wrapped_for is not self.model or wrapper is self.model:
            return self.model
        own = {id(p) for p in self.model.parameters()}
        return wrapper if any(id(p) not in own for p in wrapper.parameters()) else self.model

    @staticmethod
    def get_optimizer_cls_and_kwargs(args: Any, model: Optional[nn.Module] = None) -> tuple[type, dict[str, Any]]:
        """The optimizer class and keyword arguments that ``--optim`` (a registered name) stands for."""
        return optim.optimizer_class_and_kwargs(args, model)

    def create_scheduler(self, num_training_steps: int, optimizer: Optional[torch.optim.Optimizer] = None) -> Any:
        """The ``--lr_scheduler_type`` schedule over ``num_training_steps`` (with warmup)."""
        if self.lr_scheduler is None:
            target = optimizer if optimizer is not None else self.optimizer
            self.lr_scheduler = optim.build_scheduler(self.args, target, num_training_steps)
        return self.lr_scheduler

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Parameters that get weight decay: all but biases and the weights of normalisation layers."""
        return decay_parameter_names(model)

    def get_learning_rates(self) -> list[float]:
        if self.optimizer is None:
            raise UsageError("there is no optimizer yet: call train() or create_optimizer() first")
        return [group["lr"] for group in self.optimizer.param_groups]

    def _current_learning_rate(self) -> float:
        return float(self.get_learning_rates()[0])

    def get_num_trainable_parameters(self) -> int:
        """Trainable parameters at their full sizes (the strategy counts partitioned ones whole)."""
        return self.strategy.num_parameters(self.model, trainable_only=True)

    def get_total_train_batch_size(self, args: Any = None) -> int:
        """Samples per optimizer step: per-device batch x accumulation x data-parallel replicas
        (``world_size // (tp * cp * sp)``: ranks of one tensor/context-parallel block share a batch)."""
        args = args or self.args
        return self._train_batch_size * args.gradient_accumulation_steps * self.strategy.shard_info()[0]

    # -- counting --------------------------------------------------------------------------------

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """FLOs of one forward + backward on ``inputs``: the model's own estimate, else 0."""
        estimate = getattr(unwrap_compiled(self.model), "floating_point_ops", None)
        return int(estimate(inputs)) if estimate is not None else 0

    def _count_inputs(self, inputs: Any) -> None:
        inputs = self._input_mapper(inputs)
        if self._count_flos:
            self.state.total_flos += float(self.floating_point_ops(inputs))
        if self._tokens.enabled and not self._tokens.add(inputs, main_input_name(self.model, inputs)):
            _warn_once("include_num_input_tokens_seen: the batches have no tensor input to count tokens of")
            self._tokens.mode = "no"

    def _sync_counters(self) -> None:
        """Move the token count kept on the device into ``state`` (before log / eval / save)."""
        pending = self._tokens.take()
        if isinstance(pending, torch.Tensor) or pending:
            pending = torch.as_tensor(pending, device=self._device)
            if self.strategy.world_size > 1:
                pending = self.strategy.all_reduce(pending, op="sum")
            self.state.num_input_tokens_seen += int(pending) // self._batch_sharers  # a block's batch counts once

    def num_examples(self, dataloader: Any) -> int:
        """Samples in a dataloader's dataset (estimated from batches when it has no length)."""
        dataset = getattr(dataloader, "dataset", None)
        if has_length(dataset):
            return len(dataset)
        return len(dataloader) * (dataloader.batch_size or 1)

    def num_tokens(self, train_dl: Any, max_steps: Optional[int] = None) -> int:
        """Tokens in ``train_dl`` (reads it), or in its first ``max_steps`` steps."""
        total = 0
        limit = None if max_steps is None else max_steps * self.args.gradient_accumulation_steps
        for batch in itertools.islice(train_dl, limit):
            inputs = self._input_mapper(batch)
            name = main_input_name(self.model, inputs)
            if name is not None and isinstance(inputs[name], torch.Tensor):
                total += inputs[name].numel()
        return total

    # =========================================================================================
    # Callbacks and hooks
    # =========================================================================================

    def add_callback(self, callback: Any) -> None:
        """Add a callback (an instance or a class to instantiate) to this run's hooks."""
        if isinstance(callback, type):
            callback = callback()
        self._register_callback(callback, plugin_name(callback))

    def _register_callback(self, callback: object, name: str) -> None:
        plugin = as_hook_plugin(callback)
        self.run_hooks.register(plugin, name=name)
        self._callbacks.append((callback, plugin))

    def pop_callback(self, callback: Any) -> Any:
        """Remove a callback (an instance, or the first of a class) and return it; None if absent."""
        for entry in self._callbacks:
            registered = entry[0]
            if registered is callback or (isinstance(callback, type) and isinstance(registered, callback)):
                self.run_hooks.unregister(entry[1])
                self._callbacks.remove(entry)
                return registered
        return None

    def remove_callback(self, callback: Any) -> None:
        """Remove a callback (an instance, or the first of a class)."""
        self.pop_callback(callback)

    @property
    def callbacks(self) -> list[object]:
        """The run's callbacks: reporters, hub, then the user's, in registration order."""
        return [callback for callback, _ in self._callbacks]

    def stateful_callbacks(self) -> list[object]:
        """Callbacks whose state a checkpoint keeps (they implement ``state()``)."""
        return [callback for callback, _ in self._callbacks if callable(getattr(callback, "state", None))]

    def _event(self, event: str, **extra: Any) -> None:
        caller = self._events.callers[event]
        if caller is not None:
            caller(self, self.args, self.state, self.control, extra)

    # -- the end of a run (see treadle.lifecycle) -----------------------------------------------

    _run_open = False
    _torn_down = False
    _failed_with: Optional[BaseException] = None

    def end_run(self) -> None:
        """End the run after its last metrics: reporters finish (``run_end``), the strategy tears down.

        ``treadle train`` calls it after the final save and evaluation. From Python, call it once
        the last metrics are logged, or use ``with Trainer(...) as trainer:``; a run still open
        at interpreter exit is ended then. Calling it again does nothing; a later ``train()``
        starts a new run.
        """
        lifecycle.end_run(self)

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], traceback: Any) -> None:
        if exc is None:
            self.end_run()
        else:
            lifecycle.fail_run(self, exc)

    # =========================================================================================
    # Processes, logging and saving
    # =========================================================================================

    def is_world_process_zero(self) -> bool:
        return self.strategy.is_global_zero

    def is_local_process_zero(self) -> bool:
        return self.strategy.is_local_zero

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        """Record ``logs`` in the state's history and hand them to every reporter (``treadle_on_log``)."""
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        if self._tokens.enabled:
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
        if start_time is not None:
            logs.update(speed_metrics("train", start_time))
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._event("log", logs=logs)
        if not self._run_open:
            lifecycle.open_run(self)  # metrics outside training (evaluate, predict) make a run too

    def log_metrics(self, split: str, metrics: dict[str, Any]) -> None:
        """Print ``metrics`` as an aligned table (main process only)."""
        if self.is_world_process_zero():
            print(metrics_table(split, metrics))

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
        """Write ``<split>_results.json`` (and merge into ``all_results.json``) in output_dir."""
        if self.is_world_process_zero():
            write_results(self.args.output_dir, split, metrics, combined)

    def save_state(self) -> None:
        """Write ``trainer_state.json`` in output_dir (main process only)."""
        if not self.is_world_process_zero():
            return
        os.makedirs(self.args.output_dir, exist_ok=True)
        self.state.save_to_json(os.path.join(self.args.output_dir, "trainer_state.json"))

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Save the model's weights (safetensors) and config to ``output_dir`` (default: args.output_dir).

        Then ``treadle_on_model_saved`` fires (hub sync uploads from there), except for the
        ``_internal_call`` save of ``push_to_hub``, which uploads the folder itself.
        """
        directory = checkpoint.save_model_files(self, output_dir or self.args.output_dir)
        if not _internal_call:
            self._event("model_saved", output_dir=str(directory))

    def hold_checkpoint(self, path: Union[str, os.PathLike]) -> Callable[[], None]:
        """Keep checkpoint ``path`` from ``save_total_limit`` rotation until ``release()`` is called.

        For a plugin that reads a checkpoint after ``treadle_on_save`` returned (a background
        upload): rotation skips it while held, and the first rotation after the release (or the
        end of training) deletes it if it is still beyond the limit. Returns ``release``.
        """
        return self.checkpoint_holds.hold(path)

    def push_to_hub(self, commit_message: str = "End of training", blocking: bool = True, **kwargs: Any) -> Any:
        """Save the model to output_dir and upload it (with a model card) through the run's hub plugin.

        Needs ``--push_to_hub`` and an installed hub plugin. Every process saves (gathering
        sharded weights may be collective); only the main process uploads, so the others return
        None. ``blocking=False`` returns at once with the upload's handle (``wait()``); the hub's
        ``wait()`` waits for every upload. Further keyword arguments (``revision``, ``token``,
        model-card fields) go to the hub plugin. An upload that fails is a warning, not an error.
        """
        if self.hub is None:
            raise UsageError("push_to_hub needs --push_to_hub and an installed hub plugin (see `treadle plugins`)")
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self._event("push_begin", checkpoint_dir=self.args.output_dir)
        return self.hub.push(self.args.output_dir, commit_message=commit_message, blocking=blocking, **kwargs)


# =============================================================================================
# Helpers
# =============================================================================================

_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def _apply_log_level(args: Any) -> None:
    get_level = getattr(args, "get_process_log_level", None)
    if get_level is None:
        return
    level = get_level()
    if level is not None and level >= 0:
        logger.setLevel(level)


def _check_compile_backend(args: Any) -> None:
    """An unknown ``--torch_compile_backend`` fails here, not inside torch.compile mid-run."""
    name = args.torch_compile_backend
    if not args.torch_compile or not name or not isinstance(name, str):
        return
    from torch._dynamo import list_backends

    if name not in list_backends(exclude_tags=()):
        raise UsageError(
            f"--torch_compile_backend {name!r} is not a torch.compile backend; "
            f"choose one of {', '.join(list_backends())} (or leave it unset for inductor)"
        )


def _groups_of(iterator: Iterator[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive groups of ``size`` items (the last one may be shorter)."""
    if size == 1:
        return zip(iterator)  # one-item tuples, made without a Python frame per step
    return _lists_of(iterator, size)


def _lists_of(iterator: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while True:
        group = list(itertools.islice(iterator, size))
        if not group:
            return
        yield group


def _trial_params(trial: Any) -> Optional[dict[str, Any]]:
    params = getattr(trial, "params", None) if trial is not None else None
    return dict(params) if isinstance(params, dict) else None


def _accepts(method: Callable[..., Any], name: str) -> bool:
    parameters = inspect.signature(method).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def _overrides(component: Any, method: str, base: type) -> bool:
    """Whether ``component`` replaces ``base``'s ``method`` (in its class or on the instance)."""
    return getattr(type(component), method) is not getattr(base, method) or method in vars(component)


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def _batch_size(inputs: dict[str, Any]) -> int:
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
        if isinstance(value, (list, tuple)):
            return len(value)
    return 1


def _output_at(outputs: Any, index: int) -> Any:
    """The ``index``-th model output (``past_index``): of a tuple, or of a dict / ModelOutput in order."""
    if isinstance(outputs, dict):
        values = list(outputs.values())
        if index >= len(values):
            raise UsageError(f"--past_index {index}: the model returned only {len(values)} outputs ({', '.join(outputs)})")
        return values[index]
    if isinstance(outputs, (tuple, list)) and index < len(outputs):
        return outputs[index]
    raise UsageError(f"--past_index {index}: the model's output ({type(outputs).__name__}) has no item {index}")


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(v) for v in value)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


_LEAN_STEP_ORIGINALS = {name: vars(Trainer)[name] for name in _LEAN_STEP_REPLACES}
"""The Trainer's own step methods, as defined above (compared by identity in ``_can_step_lean``)."""

__all__ = ["Trainer", "TrainingPlan", "EvalPrediction", "PredictionOutput", "TrainOutput"]
