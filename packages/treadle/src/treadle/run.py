"""What ``treadle train | evaluate | predict`` do once the arguments are parsed.

The task named by ``--task`` builds the model and data (``TaskParts``); a Trainer runs the
command; the results land in ``output_dir`` (final model, ``<split>_results.json``,
``trainer_state.json``, ``predictions.npy``) and a short summary is printed.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import traceback
from pathlib import Path
from typing import Any, Mapping, Optional

from treadle.components import TaskParts
from treadle.errors import DEBUG_HINT, TreadleError, UsageError
from treadle.output_dir import prepare_output_dir
from treadle.plugins import get_plugin_manager
from treadle.selection import prepare_components

COMMANDS = ("train", "evaluate", "predict")


def build_task(args: Any) -> TaskParts:
    """Resolve ``--task`` through the plugin registries and build its parts.

    A task is user code: whatever is wrong with it (not a function, a signature that does not
    take the arguments, an exception inside) becomes one message that names the task.
    """
    build = get_plugin_manager().resolve("task", args.task, args).load()
    if not callable(build):
        raise UsageError(
            f"task {args.task!r} is a {type(build).__name__}, not a function; point --task at a function taking the arguments"
        )
    try:
        inspect.signature(build).bind(args)
    except TypeError:
        raise UsageError(
            f"task {args.task!r} cannot be called with the training arguments (its signature is "
            f"{_signature(build)}); a task function takes one argument, the TrainingArguments"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): let the call decide
        pass
    try:
        parts = build(args)
    except TreadleError:
        raise
    except Exception as exc:
        raise TreadleError(f"task {args.task!r} raised {type(exc).__name__}: {exc}{_where(exc)}\n{DEBUG_HINT}") from exc
    parts = _as_task_parts(args.task, parts)
    if parts.model is None and parts.model_init is None:
        raise UsageError(f"task {args.task!r} returned no model (set TaskParts.model or TaskParts.model_init)")
    _check_datasets(args.task, parts)
    return parts


_PART_NAMES = tuple(f.name for f in dataclasses.fields(TaskParts))


def _as_task_parts(task: str, parts: Any) -> TaskParts:
    """``TaskParts`` as returned, or built from a mapping with its keys (``{"model": m, ...}``)."""
    if isinstance(parts, TaskParts):
        return parts
    if isinstance(parts, Mapping):
        unknown = [str(key) for key in parts if key not in _PART_NAMES]
        if unknown:
            raise UsageError(
                f"task {task!r} returned a mapping with unknown key(s) {', '.join(map(repr, unknown))}; "
                f"the keys a task may return are {', '.join(_PART_NAMES)}"
            )
        return TaskParts(**parts)
    raise UsageError(
        f"task {task!r} returned {type(parts).__name__}; a task must return treadle.TaskParts "
        f"or a mapping with its keys ({', '.join(_PART_NAMES)})"
    )


def _check_datasets(task: str, parts: TaskParts) -> None:
    """A dataset is something to index or iterate (a Dataset, a list of samples, an iterable); not an int or a str."""
    for name in ("train_dataset", "eval_dataset", "test_dataset"):
        value = getattr(parts, name)
        datasets = value.items() if isinstance(value, Mapping) and name == "eval_dataset" else [(None, value)]
        for key, dataset in datasets:
            if dataset is None:
                continue
            if isinstance(dataset, (str, bytes)) or not (hasattr(dataset, "__getitem__") or hasattr(dataset, "__iter__")):
                where = f"{name}[{key!r}]" if key is not None else name
                raise UsageError(
                    f"task {task!r} returned {where} of type {type(dataset).__name__}; a dataset is a torch Dataset, "
                    "a datasets.Dataset, a list of samples or an iterable of them"
                )


def _signature(function: Any) -> str:
    try:
        return f"{getattr(function, '__name__', 'task')}{inspect.signature(function)}"
    except (TypeError, ValueError):
        return "unknown"


def _where(exc: BaseException) -> str:
    """`` (at file:line)`` of the innermost frame, so the message alone points at the bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def make_trainer(args: Any, parts: TaskParts) -> Any:
    from treadle.trainer import Trainer

    trainer_class = parts.trainer_class or Trainer
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, Trainer)):
        raise UsageError(f"task {args.task!r}: trainer_class must be treadle.Trainer or a subclass, got {trainer_class!r}")
    return trainer_class(
        model=parts.model,
        processing_class=parts.processing_class,
        args=args,
        data_collator=parts.data_collator,
        train_dataset=parts.train_dataset,
        eval_dataset=parts.eval_dataset,
        model_init=parts.model_init,
        compute_metrics=parts.compute_metrics,
        preprocess_logits_for_metrics=parts.preprocess_logits_for_metrics,
        callbacks=parts.callbacks,
    )


def run_command(command: str, args: Any) -> int:
    """Run ``train``, ``evaluate`` or ``predict`` for ``args``; returns the exit status."""
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
    prepare_output_dir(args.output_dir)  # before the task is built: a bad path is found in a second
    components = prepare_components(args)
    with components.strategy.model_init_context():  # e.g. meta-device init for a sharding strategy
        parts = build_task(args)
    trainer = make_trainer(args, parts)
    with trainer:  # one run: reporters finish after the final metrics (or are marked failed); teardown always runs
        summary = {"train": _train, "evaluate": _evaluate, "predict": _predict}[command](trainer, args, parts)
    if trainer.is_world_process_zero():
        hub_lines = trainer.hub.summary() if trainer.hub is not None else []  # after run_end: the last upload is done
        print("\n".join([summary, *hub_lines]))
    return 0


def _train(trainer: Any, args: Any, parts: TaskParts) -> str:
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    lines = [
        f"trained {result.global_step} steps in {result.metrics.get('train_runtime', 0):.1f}s; "
        f"train_loss {result.training_loss:.4f}"
    ]
    if parts.eval_dataset is not None and args.do_eval:
        metrics = _final_evaluation(trainer, args) or trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        lines.append("evaluation: " + _headline(metrics, "eval"))
    lines.append(f"model and metrics saved in {os.path.abspath(args.output_dir)}")
    return "\n".join(lines)


def _final_evaluation(trainer: Any, args: Any) -> Optional[dict[str, Any]]:
    """The metrics of an evaluation that already ran on the final weights (at the last step), if any.

    Evaluating again would cost a full pass for the same numbers. Not when load_best_model_at_end
    swapped in an earlier checkpoint's weights.
    """
    state = trainer.state
    if args.load_best_model_at_end and state.best_global_step not in (None, state.global_step):
        return None
    metrics: dict[str, Any] = {}
    for entry in state.log_history:
        if entry.get("step") == state.global_step and any(str(key).startswith("eval_") for key in entry):
            metrics.update((key, value) for key, value in entry.items() if key != "step")
    return metrics or None


def _evaluate(trainer: Any, args: Any, parts: TaskParts) -> str:
    if parts.eval_dataset is None:
        raise UsageError(f"task {args.task!r} has no evaluation dataset")
    source = _load_trained_weights(trainer, args)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return f"evaluated {source}: {_headline(metrics, 'eval')}\nmetrics saved in {os.path.abspath(args.output_dir)}"


def _predict(trainer: Any, args: Any, parts: TaskParts) -> str:
    dataset = parts.test_dataset if parts.test_dataset is not None else parts.eval_dataset
    if dataset is None:
        raise UsageError(f"task {args.task!r} has no test or evaluation dataset to predict on")
    source = _load_trained_weights(trainer, args)
    output = trainer.predict(dataset)
    trainer.log_metrics("test", output.metrics)
    trainer.save_metrics("test", output.metrics)
    where = _save_predictions(trainer, args, output.predictions)
    return f"predicted with {source}: {_headline(output.metrics, 'test')}\n" + (
        f"predictions saved in {where}" if where else "the model returned no predictions to save"
    )


def _load_trained_weights(trainer: Any, args: Any) -> str:
    """Weights for evaluate / predict: --resume_from_checkpoint, else the model saved in output_dir."""
    from treadle import checkpoint
    from treadle.checkpoint.model_files import WEIGHTS_NAME, read_weights

    if args.resume_from_checkpoint:
        directory = checkpoint.resolve_weights_checkpoint(args.resume_from_checkpoint, args.output_dir, args)
        if directory is not None:
            checkpoint.load_weights(trainer, directory)  # through the strategy: sharded checkpoints too
            return f"the model in {directory}"
    elif (Path(args.output_dir) / WEIGHTS_NAME).is_file():  # what save_model wrote (full weights)
        trainer.strategy.load_model_state_dict(trainer.model, read_weights(Path(args.output_dir) / WEIGHTS_NAME))
        return f"the model in {args.output_dir}"
    return "the untrained model (no --resume_from_checkpoint and no saved model in output_dir)"


def _save_predictions(trainer: Any, args: Any, predictions: Any) -> Optional[str]:
    import numpy as np

    if predictions is None or not trainer.is_world_process_zero():
        return None
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "predictions.npy")
    arrays = predictions if isinstance(predictions, (tuple, list)) else (predictions,)
    np.save(path, np.asarray(arrays[0]), allow_pickle=False)
    return path


def _headline(metrics: dict[str, Any], prefix: str) -> str:
    skipped = {f"{prefix}_runtime", f"{prefix}_samples_per_second", f"{prefix}_steps_per_second", "epoch"}
    shown = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k not in skipped]
    return ", ".join(shown) or "no metrics"
