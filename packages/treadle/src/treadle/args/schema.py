# ruff: noqa: UP007, UP045  -- the CLI parses typing.Optional/Union annotations; keep them explicit
"""TrainingArguments: the one schema every part of treadle reads its settings from.

The fields are those of the familiar ``TrainingArguments`` (both the v4 and the v5
parameter lists), so an existing config file keeps working, plus treadle's own
selectors (``backend``, ``precision``, ``strategy``, ``task``, ...) that pick the
plugins a run uses. Each field carries ``help``, ``group`` and, for closed sets,
``choices`` in its metadata: the CLI builds ``--help`` and its parser from that and
from the type annotations, so the annotations are deliberately plain
(``bool``, ``int``, ``float``, ``str``, ``Optional[X]``, ``list[str]``, ``dict``,
``Union[dict, str, None]``).

Construction runs the whole pipeline of :mod:`treadle.args.rules` (coerce, deprecated
aliases, normalise, derive, validate) and raises :class:`TrainingArgumentsError`
listing *every* problem at once, because fixing a config one error per run is
miserable.

Import rule: standard library only. ``treadle --help`` imports this module and must
not pay for torch; the few properties that need torch import it when called.
"""

import contextlib
import copy
import dataclasses
import json
import logging
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from treadle.args import rules
from treadle.args.rules import is_secret  # noqa: F401  (re-exported)
from treadle.errors import UsageError

__all__ = [
    "TrainingArguments",
    "TrainingArgumentsError",
    "DEPRECATED_ALIASES",
    "GROUPS",
    "is_secret",
]

logger = logging.getLogger(__name__)

# Group titles, in the order the CLI shows them.
OUTPUT = "Output"
TRAINING = "Training"
DATA = "Batch and data"
OPTIMIZER = "Optimizer"
SCHEDULE = "Learning-rate schedule"
LOGGING = "Logging"
EVALUATION = "Evaluation"
GENERATION = "Generation (Seq2SeqTrainer)"
CHECKPOINTS = "Checkpoints"
PRECISION = "Precision"
DISTRIBUTED = "Distributed and devices"
SPEED = "Memory and speed"
HUB = "Hub"
REPORTING = "Reporting"
PLUGINS = "Plugins"
MISC = "Misc"
DEPRECATED = "Deprecated aliases"
GROUPS = (
    OUTPUT, TRAINING, DATA, OPTIMIZER, SCHEDULE, LOGGING, EVALUATION, GENERATION, CHECKPOINTS,
    PRECISION, DISTRIBUTED, SPEED, HUB, REPORTING, PLUGINS, MISC, DEPRECATED,
)  # fmt: skip


class TrainingArgumentsError(UsageError):
    """Every problem found in a set of arguments; ``str()`` gives one per line."""

    def __init__(self, messages: list[str]):
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


def _f(default: Any, group: str, help: str, *, choices=None, factory=None, **extra) -> Any:
    """A schema field: default plus the metadata the CLI and docs are built from."""
    metadata = {"help": help, "group": group, **extra}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _alias(new: str, how: str = "", **extra) -> Any:
    """A deprecated field: accepted, moved to ``new`` with a FutureWarning. Defaults to None = not given."""
    metadata = {"help": f"Deprecated: use {new}. {how}".strip(), "group": DEPRECATED, "deprecated_for": new, **extra}
    if extra.get("choices") is not None:
        metadata["choices"] = tuple(extra["choices"])
    return field(default=None, metadata=metadata)


@dataclass(repr=False)
class TrainingArguments:
    """All settings of a training run. See each field's ``help`` metadata, or ``treadle args``."""

    # ------------------------------------------------------------------ Output
    output_dir: str = _f("trainer_output", OUTPUT, "Directory for checkpoints, predictions and the final model.")
    overwrite_output_dir: bool = _f(False, OUTPUT, "Allow writing into a non-empty output_dir. Kept for compatibility.")
    run_name: Optional[str] = _f(None, OUTPUT, "A label for this run, shown by reporters such as wandb or mlflow.")
    do_train: bool = _f(False, OUTPUT, "Run training. Read by scripts and the CLI, not by Trainer itself.")
    do_eval: Optional[bool] = _f(
        None, OUTPUT, "Run evaluation on the validation set. Unset means: yes if eval_strategy is not 'no'."
    )
    do_predict: bool = _f(False, OUTPUT, "Run prediction on the test set. Read by scripts and the CLI.")

    # ------------------------------------------------------------------ Training
    num_train_epochs: float = _f(
        3.0, TRAINING, "How many passes over the training data; a fractional part runs that share of the last epoch."
    )
    max_steps: int = _f(-1, TRAINING, "Stop after this many optimizer steps; a positive value overrides num_train_epochs.")
    gradient_accumulation_steps: int = _f(1, TRAINING, "Micro-batches whose gradients are summed before each optimizer step.")
    max_grad_norm: float = _f(1.0, TRAINING, "Clip the global gradient norm to this value; 0 turns clipping off.")
    seed: int = _f(42, TRAINING, "Random seed set at the start of training, for reproducible runs.")
    full_determinism: bool = _f(False, TRAINING, "Also force deterministic kernels (slower); for debugging reproducibility.")
    label_smoothing_factor: float = _f(0.0, TRAINING, "Label smoothing for the loss: 0 means none.")
    past_index: int = _f(
        -1,
        TRAINING,
        "Index of model outputs fed back as 'mems' on the next step (TransformerXL-style); -1 disables. Kept for compatibility.",
    )
    neftune_noise_alpha: Optional[float] = _f(
        None, TRAINING, "If set, add NEFTune noise of this scale to input embeddings during training."
    )
    average_tokens_across_devices: bool = _f(
        True, TRAINING, "Average the token count over all processes so the loss is normalised exactly."
    )
    use_cache: bool = _f(False, TRAINING, "Let the model keep its key/value cache during training (rarely needed).")

    # ------------------------------------------------------------------ Batch and data
    per_device_train_batch_size: int = _f(
        8, DATA, "Training batch size on each device; the global batch multiplies this by the number of processes."
    )
    per_device_eval_batch_size: int = _f(8, DATA, "Evaluation batch size on each device.")
    auto_find_batch_size: bool = _f(False, DATA, "On out-of-memory, halve the batch size and retry.")
    dataloader_drop_last: bool = _f(False, DATA, "Drop the last batch when it is smaller than the batch size.")
    dataloader_num_workers: int = _f(0, DATA, "Worker processes for data loading; 0 loads in the main process.")
    dataloader_pin_memory: bool = _f(True, DATA, "Use pinned host memory in the data loaders for faster copies to the device.")
    dataloader_persistent_workers: bool = _f(False, DATA, "Keep loader workers alive between epochs (faster, more RAM).")
    dataloader_prefetch_factor: Optional[int] = _f(None, DATA, "Batches each worker loads ahead of time.")
    data_seed: Optional[int] = _f(None, DATA, "Seed for data sampling only; defaults to seed.")
    remove_unused_columns: bool = _f(True, DATA, "Drop dataset columns the model's forward does not accept.")
    label_names: Optional[list[str]] = _f(
        None, DATA, "Keys of the input dict that hold labels; unset means guess from the model."
    )
    group_by_length: bool = _f(False, DATA, "Batch samples of similar length together to reduce padding.")
    length_column_name: str = _f("length", DATA, "Dataset column with precomputed lengths for group_by_length.")
    ignore_data_skip: bool = _f(
        False, DATA, "On resume, do not fast-forward the data to where the run stopped (faster start, different batches)."
    )

    # ------------------------------------------------------------------ Optimizer
    optim: str = _f(
        "adamw_torch",
        OPTIMIZER,
        "Optimizer name (e.g. adamw_torch, adamw_torch_fused, sgd, adafactor) or a 'module:attr' path.",
    )
    optim_args: Optional[str] = _f(None, OPTIMIZER, "Extra optimizer options as 'key=value,key=value'.")
    optim_target_modules: Optional[list[str]] = _f(
        None, OPTIMIZER, "Module names (or patterns) that optimizers like GaLore or APOLLO should train."
    )
    learning_rate: float = _f(5e-5, OPTIMIZER, "Peak learning rate.")
    weight_decay: float = _f(0.0, OPTIMIZER, "Decoupled weight decay, applied to all weights except biases and norm layers.")
    adam_beta1: float = _f(0.9, OPTIMIZER, "First-moment decay rate of Adam-style optimizers.")
    adam_beta2: float = _f(0.999, OPTIMIZER, "Second-moment decay rate of Adam-style optimizers.")
    adam_epsilon: float = _f(1e-8, OPTIMIZER, "Term added to the denominator of Adam-style optimizers for stability.")

    # ------------------------------------------------------------------ Learning-rate schedule
    lr_scheduler_type: str = _f("linear", SCHEDULE, "Shape of the learning-rate schedule (plugins may add more).")
    lr_scheduler_kwargs: Union[dict, str, None] = _f(
        None, SCHEDULE, "Extra scheduler options, as a JSON object or the path of a JSON file."
    )
    warmup_steps: float = _f(
        0,
        SCHEDULE,
        "Linear warmup length in steps; a value in (0, 1) is a fraction of all training steps. Takes precedence over warmup_ratio.",
    )
    warmup_ratio: float = _f(
        0.0, SCHEDULE, "Warmup as a fraction of all training steps; used only when warmup_steps is 0. Kept for compatibility."
    )

    # ------------------------------------------------------------------ Logging
    log_level: str = _f(
        "passive",
        LOGGING,
        "Log level on the main process; 'passive' leaves the current level alone.",
        choices=tuple(rules.LOG_LEVELS),
    )
    log_level_replica: str = _f("warning", LOGGING, "Log level on the other processes.", choices=tuple(rules.LOG_LEVELS))
    log_on_each_node: bool = _f(True, LOGGING, "In multi-node runs, log from the main process of every node, not only node 0.")
    logging_dir: Optional[str] = _f(
        None,
        LOGGING,
        "Directory for reporter files such as TensorBoard events; reporters pick one under output_dir if unset. Kept for compatibility.",
    )
    logging_strategy: str = _f("steps", LOGGING, "When to log training metrics.", choices=rules.INTERVAL_STRATEGIES)
    logging_steps: float = _f(
        500,
        LOGGING,
        "Steps between logs when logging_strategy is 'steps'; a value in (0, 1) is a fraction of all training steps.",
    )
    logging_first_step: bool = _f(False, LOGGING, "Also log after the very first step.")
    logging_nan_inf_filter: bool = _f(True, LOGGING, "Leave NaN/inf losses out of the logged average (does not change training).")
    disable_tqdm: Optional[bool] = _f(None, LOGGING, "Hide progress bars; unset means hide them when log_level is above warning.")
    skip_memory_metrics: bool = _f(True, LOGGING, "Do not add memory-usage reports to the metrics (they slow training down).")
    include_num_input_tokens_seen: Union[str, bool, None] = _f(
        "no",
        LOGGING,
        "Count input tokens seen: 'all', 'non_padding' or 'no' (true/false mean all/no).",
        choices=rules.TOKENS_SEEN_MODES,
    )
    debug: list[str] = _f(
        None,
        LOGGING,
        "Debug features to turn on: underflow_overflow, tpu_metrics_debug.",
        choices=rules.DEBUG_OPTIONS,
        factory=list,
    )

    # ------------------------------------------------------------------ Evaluation
    eval_strategy: str = _f("no", EVALUATION, "When to evaluate during training.", choices=rules.INTERVAL_STRATEGIES)
    eval_steps: Optional[float] = _f(
        None,
        EVALUATION,
        "Steps between evaluations when eval_strategy is 'steps'; defaults to logging_steps. A value in (0, 1) is a fraction of all training steps.",
    )
    eval_delay: Optional[float] = _f(
        None, EVALUATION, "Epochs or steps (following eval_strategy) to wait before the first evaluation."
    )
    eval_on_start: bool = _f(False, EVALUATION, "Evaluate once before training starts, as a sanity check.")
    eval_accumulation_steps: Optional[int] = _f(
        None, EVALUATION, "Move accumulated predictions to the CPU every this many steps; unset keeps all on the device."
    )
    eval_do_concat_batches: bool = _f(True, EVALUATION, "Concatenate predictions across batches; false keeps a list per batch.")
    eval_use_gather_object: bool = _f(False, EVALUATION, "Gather arbitrary Python objects (not only tensors) across processes.")
    batch_eval_metrics: bool = _f(
        False, EVALUATION, "Call compute_metrics on every batch and once at the end, instead of keeping all logits."
    )
    prediction_loss_only: bool = _f(False, EVALUATION, "During evaluation and prediction, return only the loss.")
    use_legacy_prediction_loop: bool = _f(
        False, EVALUATION, "Route evaluate/predict through Trainer.prediction_loop (for subclasses that override it)."
    )
    include_for_metrics: list[str] = _f(
        None, EVALUATION, "Extra data passed to compute_metrics: inputs, loss.", choices=rules.METRIC_INPUTS, factory=list
    )
    metric_for_best_model: Optional[str] = _f(
        None, EVALUATION, "Metric that decides which checkpoint is best; defaults to 'loss' with load_best_model_at_end."
    )
    greater_is_better: Optional[bool] = _f(
        None, EVALUATION, "Whether a larger metric_for_best_model is better; by default false for names ending in 'loss'."
    )
    predict_with_generate: bool = _f(
        False, GENERATION, "Seq2SeqTrainer: evaluate and predict with model.generate, for metrics on generated text."
    )
    generation_max_length: Optional[int] = _f(
        None, GENERATION, "Seq2SeqTrainer: max_length of generate during evaluation; unset uses the model's own default."
    )
    generation_num_beams: Optional[int] = _f(
        None, GENERATION, "Seq2SeqTrainer: num_beams of generate during evaluation; unset uses the model's own default."
    )
    generation_config: Union[dict, str, None] = _f(
        None, GENERATION, "Seq2SeqTrainer: generation settings: a directory or file of a GenerationConfig, or a dict."
    )
    sortish_sampler: bool = _f(
        False, GENERATION, "Seq2SeqTrainer: batch training samples of similar length (less padding), shuffled in chunks."
    )

    # ------------------------------------------------------------------ Checkpoints
    save_strategy: str = _f(
        "steps",
        CHECKPOINTS,
        "When to write a checkpoint; 'best' saves whenever the best metric improves.",
        choices=rules.SAVE_STRATEGIES,
    )
    save_steps: float = _f(
        500,
        CHECKPOINTS,
        "Steps between checkpoints when save_strategy is 'steps'; a value in (0, 1) is a fraction of all training steps.",
    )
    save_total_limit: Optional[int] = _f(
        None, CHECKPOINTS, "Keep at most this many checkpoints, deleting the oldest; the best one is always kept."
    )
    save_safetensors: bool = _f(
        True, CHECKPOINTS, "Write tensors as safetensors. treadle always does; false is ignored with a warning."
    )
    save_on_each_node: bool = _f(
        False, CHECKPOINTS, "In multi-node runs, save on every node (only for storage that is not shared)."
    )
    save_only_model: bool = _f(
        False, CHECKPOINTS, "Save only the model weights, not optimizer, scheduler or RNG state (such checkpoints cannot resume)."
    )
    load_best_model_at_end: bool = _f(
        False, CHECKPOINTS, "Reload the best checkpoint when training ends; needs matching save and eval strategies."
    )
    resume_from_checkpoint: Optional[str] = _f(
        None, CHECKPOINTS, "Checkpoint directory to resume from. Read by scripts and the CLI."
    )
    restore_callback_states_from_checkpoint: bool = _f(
        False, CHECKPOINTS, "On resume, also restore the state of callbacks saved in the checkpoint."
    )

    # ------------------------------------------------------------------ Precision
    fp16: bool = _f(False, PRECISION, "Train with float16 mixed precision (selects precision 'fp16').")
    bf16: bool = _f(False, PRECISION, "Train with bfloat16 mixed precision (selects precision 'bf16').")
    fp16_full_eval: bool = _f(False, PRECISION, "Evaluate fully in float16: faster, less memory, may change metrics.")
    bf16_full_eval: bool = _f(False, PRECISION, "Evaluate fully in bfloat16: faster, less memory, may change metrics.")
    tf32: Optional[bool] = _f(None, PRECISION, "Allow TF32 matmuls on Ampere or newer GPUs; unset keeps PyTorch's default.")
    half_precision_backend: str = _f(
        "auto",
        PRECISION,
        "Mixed-precision implementation. Kept for compatibility; the precision plugin decides.",
        choices=rules.HALF_PRECISION_BACKENDS,
    )
    fp16_opt_level: str = _f(
        "O1", PRECISION, "Apex AMP optimisation level. Kept for compatibility.", choices=rules.FP16_OPT_LEVELS
    )

    # ------------------------------------------------------------------ Distributed and devices
    use_cpu: bool = _f(False, DISTRIBUTED, "Train on the CPU even if an accelerator is present (same as backend 'cpu').")
    local_rank: int = _f(
        -1,
        DISTRIBUTED,
        "Rank of this process on its node, for launchers that pass it as an argument; LOCAL_RANK is read otherwise.",
    )
    ddp_backend: Optional[str] = _f(
        None, DISTRIBUTED, "Backend for torch.distributed; unset lets the strategy choose.", choices=rules.DDP_BACKENDS
    )
    ddp_timeout: int = _f(1800, DISTRIBUTED, "Timeout in seconds for process-group operations.")
    ddp_find_unused_parameters: Optional[bool] = _f(
        None, DISTRIBUTED, "DDP find_unused_parameters; unset means true unless gradient checkpointing is on."
    )
    ddp_bucket_cap_mb: Optional[int] = _f(None, DISTRIBUTED, "DDP gradient bucket size in MiB.")
    ddp_broadcast_buffers: Optional[bool] = _f(
        None, DISTRIBUTED, "DDP broadcast_buffers; unset means true unless gradient checkpointing is on."
    )
    fsdp: list[str] = _f(
        None,
        DISTRIBUTED,
        "FSDP options (e.g. 'full_shard auto_wrap'); any option selects strategy 'fsdp'.",
        choices=rules.FSDP_OPTIONS,
        factory=list,
    )
    fsdp_config: Union[dict, str, None] = _f(
        None,
        DISTRIBUTED,
        "FSDP settings as a JSON object or the path of a JSON file (min_num_params, transformer_layer_cls_to_wrap, ...).",
    )
    deepspeed: Union[dict, str, None] = _f(
        None, DISTRIBUTED, "DeepSpeed config as a JSON object or the path of a JSON file; selects strategy 'deepspeed'."
    )
    accelerator_config: Union[dict, str, None] = _f(
        None,
        DISTRIBUTED,
        "Data-loader dispatch options (split_batches, even_batches, ...), JSON object or path. Kept for compatibility.",
    )
    parallelism_config: Union[dict, str, None] = _f(
        None, DISTRIBUTED, "Multi-dimensional parallelism settings for strategies that support them, JSON object or path."
    )
    sharded_ddp: list[str] = _f(
        None, DISTRIBUTED, "FairScale sharded DDP. Not supported: use fsdp. Kept so old configs give a clear error.", factory=list
    )

    # ------------------------------------------------------------------ Memory and speed
    gradient_checkpointing: bool = _f(False, SPEED, "Recompute activations in the backward pass to save memory.")
    gradient_checkpointing_kwargs: Union[dict, str, None] = _f(
        None, SPEED, "Options for the model's gradient checkpointing, as a JSON object."
    )
    torch_compile: bool = _f(False, SPEED, "Compile the model with torch.compile.")
    torch_compile_backend: Optional[str] = _f(None, SPEED, "Backend for torch.compile; setting it turns torch_compile on.")
    torch_compile_mode: Optional[str] = _f(None, SPEED, "Mode for torch.compile; setting it turns torch_compile on.")
    torch_empty_cache_steps: Optional[int] = _f(
        None, SPEED, "Empty the accelerator's memory cache every this many steps (lower peak memory, slower)."
    )
    jit_mode_eval: bool = _f(False, SPEED, "Trace the model with TorchScript for inference. Kept for compatibility.")
    use_ipex: bool = _f(False, SPEED, "Use Intel Extension for PyTorch when installed. Kept for compatibility.")
    use_liger_kernel: bool = _f(False, SPEED, "Swap in Liger kernels for supported LLM architectures.")
    liger_kernel_config: Union[dict, str, None] = _f(None, SPEED, "Which Liger kernels to apply, as a JSON object.")

    # ------------------------------------------------------------------ Hub
    push_to_hub: bool = _f(False, HUB, "Upload the model to the Hub on every save (needs a hub plugin).")
    hub_model_id: Optional[str] = _f(
        None, HUB, "Repository to sync with, 'name' or 'org/name'; defaults to the name of output_dir."
    )
    hub_strategy: str = _f("every_save", HUB, "What to upload and when.", choices=rules.HUB_STRATEGIES)
    hub_token: Optional[str] = _f(None, HUB, "Access token for uploads; defaults to HF_TOKEN, then the stored login. Never printed or saved.")
    hub_private_repo: Optional[bool] = _f(None, HUB, "Create the repository as private; unset follows the account's default.")
    hub_always_push: bool = _f(False, HUB, "Upload every save, one after the other, instead of letting a newer save replace one still waiting.")
    hub_revision: Optional[str] = _f(None, HUB, "Branch, tag or commit to push to.")

    # ------------------------------------------------------------------ Reporting
    report_to: list[str] = _f(
        None,
        REPORTING,
        "Reporters to send metrics to: names, 'all' (every installed reporter) or 'none'.",
        factory=lambda: ["none"],
    )
    project: str = _f("huggingface", REPORTING, "Project name for reporters that group runs (e.g. trackio).")
    trackio_space_id: Optional[str] = _f("trackio", REPORTING, "Hub Space the trackio reporter deploys to; unset logs locally.")

    # ------------------------------------------------------------------ Plugins (treadle's own)
    backend: str = _f(
        "auto", PLUGINS, "Device backend plugin: auto picks the best installed one."
    )
    precision: Optional[str] = _f(
        None, PLUGINS, "Precision plugin; unset means from fp16/bf16, else fp32."
    )
    strategy: Optional[str] = _f(
        None,
        PLUGINS,
        "Distribution strategy plugin; unset means from fsdp/deepspeed, else ddp under a multi-process launcher, else single.",
    )
    task: str = _f("demo", PLUGINS, "Task to train: a registered task name or a 'module:function' path.")
    nan_inf_policy: str = _f(
        "warn", PLUGINS, "What to do on a non-finite loss or gradient: warn, skip_step or halt.", choices=rules.NAN_INF_POLICIES
    )
    plugin_options: dict = _f(
        None, PLUGINS, "Values of options contributed by plugins, keyed by flat name (e.g. wandb_project).", factory=dict
    )

    # ------------------------------------------------------------------ Misc
    ray_scope: str = _f(
        "last", MISC, "Which checkpoint Ray Tune compares across trials ('last', 'all', ...). Kept for compatibility."
    )

    # ------------------------------------------------------------------ Deprecated aliases
    evaluation_strategy: Optional[str] = _alias("eval_strategy")
    per_gpu_train_batch_size: Optional[int] = _alias("per_device_train_batch_size")
    per_gpu_eval_batch_size: Optional[int] = _alias("per_device_eval_batch_size")
    no_cuda: Optional[bool] = _alias("use_cpu")
    use_mps_device: Optional[bool] = _alias("backend", "True means backend 'mps'.")
    tpu_num_cores: Optional[int] = _alias("backend", "Any value means backend 'xla'; the launcher sets the core count.")
    xpu_backend: Optional[str] = _alias("ddp_backend", choices=rules.XPU_BACKENDS)
    fp16_backend: Optional[str] = _alias("half_precision_backend", choices=rules.HALF_PRECISION_BACKENDS)
    push_to_hub_token: Optional[str] = _alias("hub_token")
    push_to_hub_model_id: Optional[str] = _alias("hub_model_id", "The repository name; combined with push_to_hub_organization.")
    push_to_hub_organization: Optional[str] = _alias("hub_model_id", "Old organisation; becomes the 'org/' part of hub_model_id.")
    include_inputs_for_metrics: Optional[bool] = _alias("include_for_metrics", "True adds 'inputs'.")
    torchdynamo: Optional[str] = _alias("torch_compile_backend")
    tpu_metrics_debug: Optional[bool] = _alias("debug", "True adds 'tpu_metrics_debug'.")
    adafactor: Optional[bool] = _alias("optim", "True means optim 'adafactor'.")
    fsdp_min_num_params: Optional[int] = _alias("fsdp_config", "Moved to fsdp_config['min_num_params'].")
    fsdp_transformer_layer_cls_to_wrap: Optional[str] = _alias(
        "fsdp_config", "Moved to fsdp_config['transformer_layer_cls_to_wrap']."
    )
    dispatch_batches: Optional[bool] = _alias("accelerator_config", "Moved to accelerator_config['dispatch_batches'].")

    # ================================================================== construction

    def __post_init__(self) -> None:
        for key in ("_derived", "_received", "_derived_values"):
            self.__dict__[key] = {}
        problems = rules.coerce(self, _hints())
        problems += rules.apply_aliases(self, DEPRECATED_ALIASES, _DEFAULTS)
        self._finish(problems)

    def _finish(self, problems: list[str]) -> None:
        """Normalise, derive and validate; raise with every problem found."""
        problems = problems + rules.normalise(self)
        problems += _settle_plugin_options(self)
        rules.derive(self)
        # A value that failed coercion may trip a rule; then skip that rule, the real message is already in.
        self.__dict__["_bad_values"] = bool(problems)
        problems += self.validate()
        if problems:
            raise TrainingArgumentsError(list(dict.fromkeys(problems)))

    def validate(self) -> list[str]:
        """Every problem with the current values (empty when they are consistent).

        Construction calls this and raises; call it again after changing fields by hand.
        """
        return rules.check(self, _METADATA, tolerate_errors=self.__dict__.pop("_bad_values", False))

    def derived_fields(self) -> dict[str, str]:
        """Fields whose value was derived rather than given, with the reason for each."""
        return dict(self.__dict__.get("_derived", {}))

    def set_derived(self, name: str, value: Any, reason: str) -> None:
        """Set ``name`` (a core field or a plugin option) to a value derived from elsewhere, saying why.

        For a plugin's ``treadle_adjust_arguments`` that fills an argument the user left alone
        from something it reads (its own config file, another option). Setting the attribute
        directly would work too, but then ``treadle args`` calls the value a default and nobody
        can tell where it came from; with this, ``reason`` is shown as the value's source and
        ``derived_fields()`` lists it. Use it only for names outside the hook's ``explicit``
        set: a value the user gave is theirs. The ``set_*`` helpers keep the value and its
        reason; ``replace()`` hands the new instance the value from before, so the hook derives
        it again from the new instance's settings.
        """
        if name not in _FIELD_NAMES and name not in (self.__dict__.get("plugin_options") or {}):
            raise TypeError(f"set_derived: {name!r} is neither a field nor a plugin option")
        if not isinstance(reason, str) or not reason.strip():
            raise TypeError("set_derived: reason must say, in words, where the value comes from")
        by_plugins = self.__dict__.setdefault("_set_derived", {})
        if name in by_plugins:
            before = by_plugins[name][0]
        else:  # what the user gave: a value the core derived is derived again by replace()
            before = self.__dict__["_received"].get(name, getattr(self, name))
        setattr(self, name, value)
        by_plugins[name] = (before, value, reason)
        self.__dict__["_derived"][name] = reason

    def _update(self, **changes: Any) -> "TrainingArguments":
        """Apply ``changes`` in place and re-derive, as if they had been given at construction.

        Values derived earlier are reset to what the user gave (unless changed since),
        so e.g. ``eval_steps`` follows a new ``logging_steps``. On error nothing changes.
        """
        unknown = set(changes) - _FIELD_NAMES
        if unknown:
            raise TypeError(f"unknown field(s): {', '.join(sorted(unknown))}")
        snapshot = copy.copy(self.__dict__)
        derived_values = self.__dict__["_derived_values"]
        for name, received in self.__dict__["_received"].items():
            if name not in changes and getattr(self, name) == derived_values.get(name):
                object.__setattr__(self, name, received)
        for key in ("_derived", "_received", "_derived_values"):
            self.__dict__[key] = {}
        for name, value in changes.items():
            object.__setattr__(self, name, value)
        try:
            problems = rules.coerce(self, _hints())
            self._finish(problems + rules.apply_aliases(self, DEPRECATED_ALIASES, _DEFAULTS))
            for name, (_, value, reason) in self.__dict__.get("_set_derived", {}).items():
                if name not in changes and getattr(self, name) == value:  # set_derived: still in force
                    self.__dict__["_derived"][name] = reason
        except TrainingArgumentsError:
            self.__dict__.clear()
            self.__dict__.update(snapshot)
            raise
        return self

    def replace(self, **changes: Any) -> "TrainingArguments":
        """A new instance with ``changes``; derived values are re-derived, not copied.

        Prefer this to ``dataclasses.replace``, which would pass derived values back
        in as if the user had chosen them (e.g. keep precision 'fp16' after fp16=False).
        """
        kwargs = {
            f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in DEPRECATED_ALIASES
        }
        for name, received in self.__dict__["_received"].items():
            if getattr(self, name) == self.__dict__["_derived_values"].get(name):
                kwargs[name] = received
        for name, (before, value, _) in self.__dict__.get("_set_derived", {}).items():
            if getattr(self, name) == value:  # a plugin derives it again for the new instance
                if name in _FIELD_NAMES:
                    kwargs[name] = before
                else:
                    kwargs["plugin_options"][name] = before
        kwargs.update(changes)
        return type(self)(**kwargs)

    # ================================================================== plugin options

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: fall back to plugin-contributed options,
        # so ``args.wandb_project`` works like a core field.
        if not name.startswith("_"):
            options = self.__dict__.get("plugin_options")
            if isinstance(options, dict) and name in options:
                return options[name]
        raise AttributeError(f"{type(self).__name__!s} has no field or plugin option {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        options = self.__dict__.get("plugin_options")
        if name not in _FIELD_NAMES and isinstance(options, dict) and name in options and not hasattr(type(self), name):
            options[name] = value
        else:
            object.__setattr__(self, name, value)

    # ================================================================== serialisation

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values of every current field, credentials masked."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in DEPRECATED_ALIASES:
                continue
            value = copy.deepcopy(getattr(self, f.name))
            if f.name == "plugin_options" and isinstance(value, dict):
                value = {k: _mask(k, v) for k, v in value.items()}
            out[f.name] = _mask(f.name, value)
        return out

    def to_json_string(self) -> str:
        """``to_dict()`` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, default=str)

    def to_sanitized_dict(self) -> dict[str, Any]:
        """Flat scalars only, for hyperparameter tables such as TensorBoard's hparams.

        Plugin options are flattened in by name; lists, dicts and None become strings.
        """
        flat = self.to_dict()
        flat.update(flat.pop("plugin_options", {}))
        flat.update(train_batch_size=self.train_batch_size, eval_batch_size=self.eval_batch_size)
        return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}

    def __repr__(self) -> str:
        body = ",\n".join(f"  {k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}(\n{body}\n)"

    __str__ = __repr__

    # ================================================================== processes and devices

    @property
    def world_size(self) -> int:
        """Number of processes in the run (WORLD_SIZE, set by torchrun and friends)."""
        return rules._env_int("WORLD_SIZE", 1)

    @property
    def process_index(self) -> int:
        """Global rank of this process (RANK)."""
        return rules._env_int("RANK", 0)

    @property
    def local_process_index(self) -> int:
        """Rank of this process on its node (LOCAL_RANK, else the local_rank field)."""
        if "LOCAL_RANK" in os.environ:
            return rules._env_int("LOCAL_RANK", 0)
        return max(self.local_rank, 0)

    @property
    def should_log(self) -> bool:
        """Whether this process logs: the main process, or each node's with log_on_each_node."""
        return (self.local_process_index if self.log_on_each_node else self.process_index) == 0

    @property
    def should_save(self) -> bool:
        """Whether this process writes checkpoints (main process, or each node's with save_on_each_node)."""
        return (self.local_process_index if self.save_on_each_node else self.process_index) == 0

    def _selected_backend(self) -> Any:
        """The backend these arguments select (kept per ``backend`` value; imports torch)."""
        cached = self.__dict__.get("_backend_choice")
        if cached is None or cached[0] != (self.backend, self.use_cpu):
            from treadle.selection import selected_backend

            cached = ((self.backend, self.use_cpu), selected_backend(self))
            self.__dict__["_backend_choice"] = cached
        return cached[1]

    @property
    def n_gpu(self) -> int:
        """GPUs driven by this process, as the selected backend says (cuda, mps: 1; cpu, xla: 0).

        treadle runs one device per process, so this is never more than 1 unless set by hand.
        """
        if "_n_gpu" in self.__dict__:
            return self.__dict__["_n_gpu"]
        return int(self._selected_backend().n_gpu)

    @n_gpu.setter
    def n_gpu(self, value: int) -> None:
        self.__dict__["_n_gpu"] = int(value)

    @property
    def device(self):
        """The torch.device of this process: the one the selected backend gives ``LOCAL_RANK``.

        A plugin or a user may set it explicitly.
        """
        if "_device" in self.__dict__:
            return self.__dict__["_device"]
        return self._selected_backend().setup_device(self.local_process_index)

    @device.setter
    def device(self, value) -> None:
        self.__dict__["_device"] = value

    @property
    def parallel_mode(self) -> str:
        """'tpu' (a backend with its own replicas: XLA), 'distributed', 'not_distributed' or 'not_parallel'."""
        own = getattr(self._selected_backend(), "parallel_mode", None)
        if own:
            return own
        if self.world_size > 1:
            return "distributed"
        if self.__dict__.get("_n_gpu", 0) > 1:
            return "not_distributed"
        return "not_parallel"

    @property
    def train_batch_size(self) -> int:
        """Batch size one process's training loader yields."""
        return self.per_device_train_batch_size * max(1, self.__dict__.get("_n_gpu", 1))

    @property
    def eval_batch_size(self) -> int:
        """Batch size one process's evaluation loader yields."""
        return self.per_device_eval_batch_size * max(1, self.__dict__.get("_n_gpu", 1))

    def get_process_log_level(self) -> int:
        """The logging level for this process: log_level on logging processes, log_level_replica elsewhere.

        'passive' keeps the level already configured (main) or means WARNING (replicas).
        """
        main = rules.LOG_LEVELS[self.log_level]
        replica = rules.LOG_LEVELS[self.log_level_replica]
        if main == -1:
            main = logging.getLogger("treadle").getEffectiveLevel()
        if replica == -1:
            replica = logging.WARNING
        return main if self.should_log else replica

    @contextlib.contextmanager
    def main_process_first(self, local: bool = True, desc: str = "work"):
        """Let the main process (of each node if ``local``) run the block before the others.

        Useful for work that fills a cache the replicas then read (e.g. dataset
        preprocessing). A no-op in a single process. Under a launcher, a task runs before the
        Trainer (and its strategy) exists, so the process group is started here when none is
        yet; the strategy then uses that one (``process_group_started_by_treadle``).
        """
        dist = sys.modules.get("torch.distributed")
        if self.world_size > 1 and os.environ.get("MASTER_ADDR"):
            dist = self._start_process_group()
        active = dist is not None and self.world_size > 1 and dist.is_available() and dist.is_initialized()
        is_main = (self.local_process_index if local else self.process_index) == 0
        if active and not is_main:
            logger.debug("process %d waiting for the main process to finish %s", self.process_index, desc)
            dist.barrier()
        try:
            yield
        finally:
            if active and is_main:
                logger.debug("main process %d finished %s, releasing replicas", self.process_index, desc)
                dist.barrier()

    def _start_process_group(self):
        import datetime

        import torch.distributed as dist

        if dist.is_available() and not dist.is_initialized():
            # backend None: torch's default for this machine (gloo for the CPU, nccl for CUDA)
            dist.init_process_group(
                self.ddp_backend, init_method="env://", rank=self.process_index, world_size=self.world_size,
                timeout=datetime.timedelta(seconds=self.ddp_timeout or 1800),
            )
            self.__dict__["process_group_started_by_treadle"] = True
        return dist

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warmup length in steps for a run of ``num_training_steps``.

        A whole warmup_steps wins; a fraction in (0, 1) scales the run length; else warmup_ratio does.
        """
        steps = self.warmup_steps
        if steps >= 1:
            return int(steps)
        ratio = steps if steps > 0 else self.warmup_ratio
        return int(-(-num_training_steps * ratio // 1))  # ceil without importing math

    def load_json_field(self, name: str) -> Optional[dict]:
        """The value of a JSON field (fsdp_config, deepspeed, ...) as a dict, reading the file if a path was given."""
        if name not in rules.JSON_FIELDS:
            raise ValueError(f"{name!r} is not a JSON field; JSON fields are {', '.join(rules.JSON_FIELDS)}")
        value = getattr(self, name)
        if isinstance(value, str):
            with open(value, encoding="utf-8") as fh:
                return json.load(fh)
        return value

    # ================================================================== grouped setters
    # Same names and defaults as the seeds' helpers; each returns self and re-validates.

    def set_training(
        self,
        learning_rate: float = 5e-5,
        batch_size: int = 8,
        weight_decay: float = 0,
        num_epochs: float = 3,
        max_steps: int = -1,
        gradient_accumulation_steps: int = 1,
        seed: int = 42,
        gradient_checkpointing: bool = False,
        *,
        num_train_epochs: Optional[float] = None,
    ) -> "TrainingArguments":
        """Set the basic training options and turn do_train on."""
        return self._update(
            do_train=True,
            learning_rate=learning_rate,
            per_device_train_batch_size=batch_size,
            weight_decay=weight_decay,
            num_train_epochs=num_epochs if num_train_epochs is None else num_train_epochs,
            max_steps=max_steps,
            gradient_accumulation_steps=gradient_accumulation_steps,
            seed=seed,
            gradient_checkpointing=gradient_checkpointing,
        )

    def set_evaluate(
        self,
        strategy: str = "no",
        steps: int = 500,
        batch_size: int = 8,
        accumulation_steps: Optional[int] = None,
        delay: Optional[float] = None,
        loss_only: bool = False,
        jit_mode: bool = False,
    ) -> "TrainingArguments":
        """Set the evaluation options; a strategy other than 'no' turns do_eval on."""
        return self._update(
            eval_strategy=strategy,
            eval_steps=steps,
            per_device_eval_batch_size=batch_size,
            eval_accumulation_steps=accumulation_steps,
            eval_delay=delay,
            prediction_loss_only=loss_only,
            jit_mode_eval=jit_mode,
        )

    def set_testing(self, batch_size: int = 8, loss_only: bool = False, jit_mode: bool = False) -> "TrainingArguments":
        """Set the prediction options and turn do_predict on."""
        return self._update(
            do_predict=True, per_device_eval_batch_size=batch_size, prediction_loss_only=loss_only, jit_mode_eval=jit_mode
        )

    def set_save(
        self, strategy: str = "steps", steps: int = 500, total_limit: Optional[int] = None, on_each_node: bool = False
    ) -> "TrainingArguments":
        """Set the checkpointing options."""
        return self._update(
            save_strategy=strategy, save_steps=steps, save_total_limit=total_limit, save_on_each_node=on_each_node
        )

    def set_logging(
        self,
        strategy: str = "steps",
        steps: int = 500,
        report_to: Union[str, list] = "none",
        level: str = "passive",
        first_step: bool = False,
        nan_inf_filter: bool = True,
        on_each_node: bool = True,
        replica_level: str = "passive",
    ) -> "TrainingArguments":
        """Set the logging and reporting options."""
        return self._update(
            logging_strategy=strategy,
            logging_steps=steps,
            report_to=report_to,
            log_level=level,
            logging_first_step=first_step,
            logging_nan_inf_filter=nan_inf_filter,
            log_on_each_node=on_each_node,
            log_level_replica=replica_level,
        )

    def set_push_to_hub(
        self,
        model_id: str,
        strategy: str = "every_save",
        token: Optional[str] = None,
        private_repo: Optional[bool] = None,
        always_push: bool = False,
        revision: Optional[str] = None,
    ) -> "TrainingArguments":
        """Turn push_to_hub on and set the hub options."""
        return self._update(
            push_to_hub=True,
            hub_model_id=model_id,
            hub_strategy=strategy,
            hub_token=token,
            hub_private_repo=private_repo,
            hub_always_push=always_push,
            hub_revision=revision,
        )

    def set_optimizer(
        self,
        name: str = "adamw_torch",
        learning_rate: float = 5e-5,
        weight_decay: float = 0,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        args: Optional[str] = None,
    ) -> "TrainingArguments":
        """Set the optimizer and its hyperparameters."""
        return self._update(
            optim=name,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            adam_beta1=beta1,
            adam_beta2=beta2,
            adam_epsilon=epsilon,
            optim_args=args,
        )

    def set_lr_scheduler(
        self, name: str = "linear", num_epochs: float = 3.0, max_steps: int = -1, warmup_steps: float = 0, warmup_ratio: float = 0
    ) -> "TrainingArguments":
        """Set the learning-rate schedule and the run length it spans."""
        return self._update(
            lr_scheduler_type=name,
            num_train_epochs=num_epochs,
            max_steps=max_steps,
            warmup_steps=warmup_steps,
            warmup_ratio=warmup_ratio,
        )

    def set_dataloader(
        self,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        prefetch_factor: Optional[int] = None,
        auto_find_batch_size: bool = False,
        ignore_data_skip: bool = False,
        sampler_seed: Optional[int] = None,
    ) -> "TrainingArguments":
        """Set the data-loader options."""
        return self._update(
            per_device_train_batch_size=train_batch_size,
            per_device_eval_batch_size=eval_batch_size,
            dataloader_drop_last=drop_last,
            dataloader_num_workers=num_workers,
            dataloader_pin_memory=pin_memory,
            dataloader_persistent_workers=persistent_workers,
            dataloader_prefetch_factor=prefetch_factor,
            auto_find_batch_size=auto_find_batch_size,
            ignore_data_skip=ignore_data_skip,
            data_seed=sampler_seed,
        )


# ---------------------------------------------------------------------- module tables

_FIELDS = dataclasses.fields(TrainingArguments)
_FIELD_NAMES = frozenset(f.name for f in _FIELDS)
_METADATA = {f.name: dict(f.metadata) for f in _FIELDS}
_DEFAULTS = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default for f in _FIELDS}

DEPRECATED_ALIASES: dict[str, str] = {f.name: f.metadata["deprecated_for"] for f in _FIELDS if "deprecated_for" in f.metadata}
"""Deprecated field name -> the field that replaces it."""

_HINTS: dict[str, Any] = {}


def _hints() -> dict[str, Any]:
    """Resolved type annotations of every field (cached)."""
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(TrainingArguments))
    return _HINTS


def _settle_plugin_options(args: TrainingArguments) -> list[str]:
    """Plugin fields' defaults, types and choices (``treadle.config.settle_plugin_options``)."""
    from treadle.config import settle_plugin_options

    return settle_plugin_options(args)


def _mask(name: str, value: Any) -> Any:
    """Hide credentials: keep None (so 'not set' stays visible), replace anything else."""
    if value is not None and is_secret(name):
        return "***"
    return value
