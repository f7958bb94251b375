"""Every hook a treadle plugin may implement, and nothing else.

Plugin authors implement these with ``from treadle import hookimpl``. Three families:

1. **Registration** hooks run once per process, when a registry is first needed. They must be
   cheap: name what the plugin offers and the ``"module:attr"`` path of its implementation; the
   implementation is imported only when an argument selects it. No torch, no vendor library.
2. **Configuration** hooks adjust and validate the parsed arguments and describe the
   environment for ``treadle env``.
3. **Lifecycle** hooks are called by the training loop. They all receive ``trainer``, ``args``,
   ``state`` and ``control`` (event-specific arguments come after, by keyword). Their return
   value is ignored: a hook steers the loop only by setting flags on ``control``.

Plus checkpoint hooks, so a plugin can keep its own state across a resume and fetch a checkpoint
from elsewhere (``--resume_from_checkpoint hub:org/name``).

pluggy passes arguments by name, so an implementation may accept only the arguments it needs
(``def treadle_on_log(logs): ...`` is valid).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from treadle.markers import hookspec

if TYPE_CHECKING:  # imported for annotations only: this module must stay light
    from treadle.args import TrainingArguments
    from treadle.catalog import Catalog
    from treadle.registry import ArgumentSchema, ComponentSpec, Register
    from treadle.state import TrainerControl, TrainerState


# --------------------------------------------------------------------------------------------
# Family 1: registration
# --------------------------------------------------------------------------------------------


@hookspec
def treadle_add_arguments(schema: ArgumentSchema) -> None:
    """Add this plugin's own argument fields.

    Call ``schema.add(name, type=..., default=..., help=...)``. Names must start with the
    plugin's namespace (``wandb_project`` for the plugin ``wandb``) so they never collide with
    the core schema. The fields appear in ``treadle train --help`` under the plugin's group,
    parse like core fields, and are read back as ``args.<name>`` (stored in
    ``args.plugin_options``).
    """


@hookspec
def treadle_register_backends(register: Register) -> None:
    """Name the device backends this plugin provides (selected by ``--backend``).

    ``register("xla", "treadle_xla.backend:XlaBackend", requires=("torch_xla",), priority=10)``.
    ``priority`` orders the candidates of ``--backend auto`` (highest available wins: cuda 30, mps 20,
    xla 10, the builtin cpu 0).
    """


@hookspec
def treadle_register_precisions(register: Register) -> None:
    """Name the precision plugins this plugin provides (selected by ``--precision``)."""


@hookspec
def treadle_register_strategies(register: Register) -> None:
    """Name the distribution strategies this plugin provides (selected by ``--strategy``)."""


@hookspec
def treadle_register_optimizers(register: Register) -> None:
    """Name the optimizers this plugin provides (selected by ``--optim``).

    The target is a function ``(args, model=None) -> (optimizer_class, kwargs)``, the same
    contract as ``Trainer.get_optimizer_cls_and_kwargs``.
    """


@hookspec
def treadle_register_schedulers(register: Register) -> None:
    """Name the learning-rate schedules this plugin provides (``--lr_scheduler_type``).

    The target is a function
    ``(optimizer, *, num_warmup_steps, num_training_steps, **scheduler_kwargs) -> LRScheduler``.
    """


@hookspec
def treadle_register_reporters(register: Register) -> None:
    """Name the metric reporters this plugin provides (selected by ``--report_to``)."""


@hookspec
def treadle_register_hubs(register: Register) -> None:
    """Name the model-hub synchronisers this plugin provides (used by ``--push_to_hub``)."""


@hookspec
def treadle_register_kernels(register: Register) -> None:
    """Name the kernel sets this plugin provides (e.g. ``liger``, selected by ``--use_liger_kernel``).

    The target is a function ``(model, **kernel_config) -> None`` that swaps the kernels into the
    model in place; it gets the user's ``--liger_kernel_config`` as keyword arguments. It runs when
    the Trainer takes the model, before the strategy wraps it.
    """


@hookspec
def treadle_register_tasks(register: Register) -> None:
    """Name the tasks this plugin provides (selected by ``--task``).

    The target is a function ``(args) -> TaskParts`` (see ``treadle.components``). Pass
    ``defaults={"learning_rate": 1e-3, ...}`` to ``register`` for argument values that suit the
    task; they apply only to arguments the user did not set.
    """


@hookspec
def treadle_register_search_backends(register: Register) -> None:
    """Register hyperparameter search backends (``Trainer.hyperparameter_search(backend=...)``,
    ``treadle search --search_backend NAME``).

    The target subclasses ``treadle.components.SearchBackend``.
    """


# --------------------------------------------------------------------------------------------
# Family 2: configuration and environment
# --------------------------------------------------------------------------------------------


@hookspec
def treadle_extend_catalog(catalog: Catalog) -> None:
    """Add seed-compatibility rows to ``treadle.catalog``: flags that select a component, and
    install hints for names the plugin's distribution provides.

    ``catalog.imply(kind, name, reason)`` makes selector ``kind`` default to ``name`` whenever
    ``reason(args)`` returns a (non-empty) explanation, e.g. a plugin's own ``--my_sharding``
    flag choosing its strategy; ``catalog.hint(kind, name, "my-distribution")`` names the distribution
    an error message tells the user to install when that name is missing. Called once, when argument rules first need the catalog;
    keep it cheap (no heavy imports).
    """


@hookspec
def treadle_adjust_arguments(args: TrainingArguments, explicit: frozenset[str]) -> None:
    """Adjust the parsed arguments in place before they are validated.

    ``explicit`` holds the names the user set (command line, config file or Python), so an
    implication never overrides an explicit choice. Raise ``treadle.UsageError`` for a real
    contradiction.
    """


@hookspec
def treadle_validate_arguments(args: TrainingArguments) -> list[str] | None:
    """Return messages describing what is wrong with the arguments (or None).

    The messages of every plugin are collected and reported together, in one error.
    """


@hookspec(firstresult=True)
def treadle_resolve_component(kind: str, name: str, args: TrainingArguments | None) -> ComponentSpec | None:
    """Resolve a component name that no registry holds; the first non-None answer wins.

    The core's own implementation (``trylast``) accepts ``module:attr`` paths, so
    ``--task mypkg.tasks:build`` and ``--optim mypkg.opt:lion`` work without a plugin.
    """


@hookspec(firstresult=True)
def treadle_select_default(kind: str, args: TrainingArguments, candidates: list[ComponentSpec]) -> str | None:
    """Choose the component name for ``--backend auto`` (``kind == "backend"``).

    ``candidates`` are the registered specs of that kind, highest priority first. The core's
    own implementation (``trylast``) picks the first one whose class says it is available. A
    site plugin can pin a choice by answering first.
    """


@hookspec(firstresult=True)
def treadle_render_model_card(trainer: Any, details: dict[str, Any]) -> str | None:
    """Return the text of the model card (README.md) ``Trainer.create_model_card`` writes.

    ``details`` holds the caller's fields (language, license, tags, model_name, finetuned_from,
    tasks, dataset_tags, dataset, dataset_args). The first non-None answer wins; with none,
    the core writes a plain card. Called on the main process only.
    """


@hookspec
def treadle_report_env() -> list[tuple[str, str]] | None:
    """Return ``(label, value)`` lines for ``treadle env`` (library versions, devices).

    Called only by ``treadle env``, so it may import the plugin's own library. A failure is
    shown as that plugin's error line and does not stop the others.
    """


# --------------------------------------------------------------------------------------------
# Family 3: lifecycle (called by the Trainer; steer only through ``control``)
# --------------------------------------------------------------------------------------------


@hookspec
def treadle_on_init_end(trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
    """The Trainer has finished its constructor."""


@hookspec
def treadle_on_train_begin(trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
    """Training starts (after a resume, ``state`` already holds the restored values)."""


@hookspec
def treadle_on_train_end(trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
    """Training has ended (normally or because ``control.should_training_stop`` was set)."""


@hookspec
def treadle_on_run_end(trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
    """The run is over: no more metrics will be logged; close what ``train_begin`` opened.

    Fired once per run, after the last metrics: ``treadle train`` fires it after the final
    save and evaluation (``train_end`` comes before those), ``treadle evaluate`` / ``predict``
    after their metrics. From Python it is ``Trainer.end_run()`` (or leaving a
    ``with Trainer(...) as trainer:`` block); a run still open when the interpreter exits is
    ended then. Reporters finish their runs here. The strategy and backend are torn down right
    after it. An implementation that raises is reported as a warning; the others still run.
    """


@hookspec
def treadle_on_exception(
    trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl, exception: BaseException
) -> None:
    """The run failed with ``exception`` (raised by ``train``, or by the command around it).

    Fired instead of ``run_end``, once, before the exception propagates (``KeyboardInterrupt``
    included); reporters mark their runs failed, a hub upload stops cleanly. The strategy and
    backend are torn down right after it. An implementation that raises is reported as a
    warning; it never hides ``exception``.
    """


@hookspec
def treadle_on_epoch_begin(trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
    """An epoch starts."""


@hookspec
def treadle_on_epoch_end(trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
    """An epoch ends. The flow plugin decides here about epoch-wise log / eval / save."""


@hookspec
def treadle_on_step_begin(trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
    """An optimizer step starts (its first micro-batch is about to run)."""


@hookspec
def treadle_on_substep_end(trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
    """A gradient-accumulation micro-batch ended without an optimizer step."""


@hookspec
def treadle_on_pre_optimizer_step(trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
    """Gradients are final (clipped) and the optimizer is about to step."""


@hookspec
def treadle_on_optimizer_step(trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
    """The optimizer has stepped; gradients are not zeroed yet."""


@hookspec
def treadle_on_step_end(trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
    """An optimizer step ended; ``state.global_step`` counts it. Set ``control`` flags here."""


@hookspec
def treadle_on_evaluate(
    trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics: dict[str, float]
) -> None:
    """An evaluation finished with ``metrics``; they were logged already.

    To add a metric computed from these (perplexity from the loss), implement
    ``treadle_derive_metrics``: a value put into ``metrics`` here reaches what ``evaluate``
    returns, but not the evaluation's log entry nor the reporters.
    """


@hookspec
def treadle_on_predict(
    trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics: dict[str, float]
) -> None:
    """A prediction run finished with ``metrics``."""


@hookspec
def treadle_on_prediction_step(
    trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl, num_batches: int | None
) -> None:
    """One evaluation or prediction batch was processed.

    ``num_batches``: how many batches this evaluation or prediction runs on this process (the
    total of a progress bar), or None when the data has no length. Like every argument, an
    implementation takes it only if it needs it.
    """


@hookspec
def treadle_on_log(
    trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict[str, float]
) -> None:
    """The Trainer logged ``logs`` (reporters write them out here)."""


@hookspec
def treadle_on_save(
    trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl, checkpoint_dir: str
) -> None:
    """A checkpoint was written, complete and verified, at ``checkpoint_dir``.

    Fired before ``save_total_limit`` rotation deletes older checkpoints, so every checkpoint
    this hook saw still exists while it runs. A plugin that reads a checkpoint after returning
    (a background upload) calls ``release = trainer.hold_checkpoint(checkpoint_dir)`` here and
    ``release()`` when done: rotation skips a held checkpoint, and the first rotation after its
    release deletes it if it is still beyond the limit.
    """


@hookspec
def treadle_on_model_saved(
    trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl, output_dir: str
) -> None:
    """``Trainer.save_model`` wrote the model (weights, config, arguments) to ``output_dir``.

    Fired on every process once the files are complete (``treadle train`` saves the final model
    this way, after ``train_end``). Hub sync uploads the folder from here. Not fired for the
    save that ``Trainer.push_to_hub`` makes before its own upload.
    """


@hookspec
def treadle_on_push_begin(
    trainer: Any, args: TrainingArguments, state: TrainerState, control: TrainerControl, checkpoint_dir: str
) -> None:
    """The Trainer is about to push ``checkpoint_dir`` to a model hub (main process only)."""


# --------------------------------------------------------------------------------------------
# Metrics derived from an evaluation's own (called by the Trainer; the return value counts)
# --------------------------------------------------------------------------------------------


@hookspec
def treadle_derive_metrics(
    trainer: Any, args: TrainingArguments, state: TrainerState, metrics: Mapping[str, float], metric_key_prefix: str
) -> dict[str, float] | None:
    """Return metrics computed from an evaluation's metrics (perplexity from the loss), or None.

    Called by ``evaluate`` and ``predict`` once ``metrics`` is complete (loss, ``compute_metrics``,
    speeds), before anything sees it: what every implementation returns is added, and only then
    is the evaluation logged (``state.log_history``, every reporter's ``treadle_on_log``),
    handed to ``treadle_on_evaluate`` / ``treadle_on_predict`` and returned, so a derived number
    is everywhere the measured ones are. ``metrics`` is read-only; ``metric_key_prefix`` is
    ``eval`` (``eval_<name>`` for one set of a dict of datasets) or ``test``: name what you
    return with it (``f"{metric_key_prefix}_perplexity"``). Returning a name ``metrics`` already
    holds is an error: a derived metric never hides a measured one. Implemented by a run's
    plugins and callbacks (a task's ``TaskParts.callbacks``); called on every process.
    """


# --------------------------------------------------------------------------------------------
# Family 4: checkpoints (plugin state, checkpoints fetched from elsewhere)
# --------------------------------------------------------------------------------------------


@hookspec
def treadle_checkpoint_state(trainer: Any) -> dict[str, Any] | None:
    """Return state to store in the checkpoint under this plugin's name.

    Nested dicts, lists and tuples of numbers, strings, tensors and numpy arrays; tensors go
    to safetensors, the rest to JSON (nothing is pickled, so anything else is an error). A user
    callback's state is stored under ``callback:<ClassName>``.
    """


@hookspec
def treadle_load_checkpoint_state(trainer: Any, states: Mapping[str, dict[str, Any]]) -> None:
    """Restore state on resume; ``states`` maps plugin names to what they returned above.

    Called after the weights, optimizer, scheduler and trainer state are restored and before
    the random generators are, so a hook may draw random numbers without shifting the run.
    """


@hookspec(firstresult=True)
def treadle_fetch_checkpoint(location: str, args: TrainingArguments | None) -> str | None:
    """Fetch the checkpoint a ``--resume_from_checkpoint`` location names that is no local path.

    ``location`` looks like ``scheme:rest`` (``hub:org/name`` for a hub repository's
    ``last-checkpoint/``). Return the local directory of the fetched checkpoint (the core then
    verifies its manifest as for any checkpoint), or None for a scheme this plugin does not
    know; raise ``treadle.CheckpointError`` when the location is yours but cannot be fetched.
    Called on every process (the download may be shared); import heavy libraries inside.
    """
