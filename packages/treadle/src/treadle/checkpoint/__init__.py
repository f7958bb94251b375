"""Checkpoints: what goes in one, how it is written so a crash never leaves a fake, how it is read.

Layout (the seeds' ``output_dir/checkpoint-<global_step>/``)::

    model.safetensors            weights (tied tensors once)      } also what save_model writes
    config.json                  the model's config, if it has one }
    training_args.json           the arguments, tokens masked     }
    tokenizer.json, ...          the processing_class's own files } (its save_pretrained;
                                 listed under "processing_files" in the manifest)
    trainer_state.json           TrainerState (step, epoch, best metric, log history, and the
                                 stateful callbacks for ``restore_callback_states_from_checkpoint``)
    optimizer.json/.safetensors  optimizer state dict: tensors in safetensors, the rest JSON
    scheduler.json               lr scheduler state dict
    precision.json               precision (loss scaler) state
    rng_state.json/.safetensors  python, numpy, torch CPU and device RNG states
                                 (``rng_state_<rank>.*`` per process when there are several)
    plugin_states.json           each plugin's ``treadle_checkpoint_state``, by plugin name
                                 (a user callback's as ``callback:<Class>``)
    manifest.json                size and sha256 of every file above; written last

Nothing is pickled, and loading never unpickles.

Why a crash cannot leave a half checkpoint that looks whole: everything is written into
``output_dir/.incomplete-checkpoint-<step>`` (a name the resume never considers), every file
fsynced, the manifest written last, then the directory is renamed to ``checkpoint-<step>`` and
``output_dir`` fsynced. Rotation renames a doomed checkpoint out of the way before deleting it.
On load the manifest is checked: a missing manifest means the save never finished; a missing,
truncated or altered file is named in the error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Optional, Union

from treadle.checkpoint import run_state
from treadle.checkpoint.manifest import MANIFEST_NAME, manifest_file, verify_checkpoint, verify_files, write_manifest
from treadle.checkpoint.model_files import (
    WEIGHTS_NAME,
    read_weights,
    replace_files_atomically,
    write_model_files,
    write_processing_files,
    write_weights,
)
from treadle.checkpoint.serialization import fsync_path, load_state_files, save_state_files, unreadable_file_is_checkpoint_error
from treadle.errors import CheckpointError, UsageError
from treadle.flow import best_metric_key, is_improvement

if TYPE_CHECKING:
    from treadle.args import TrainingArguments

logger = logging.getLogger("treadle.checkpoint")

CHECKPOINT_PREFIX = "checkpoint"
CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")
INCOMPLETE_PREFIX = ".incomplete-"
DOOMED_PREFIX = ".deleting-"
TRAINER_STATE_NAME = "trainer_state.json"
KIND_FULL = "full"
KIND_MODEL_ONLY = "model-only"

__all__ = [
    "CHECKPOINT_PREFIX",
    "checkpoint_file",
    "pickled_files",
    "processing_files",
    "read_full_state",
    "write_full_state",
    "list_checkpoints",
    "load_best_model",
    "load_checkpoint",
    "resolve_resume_checkpoint",
    "resolve_weights_checkpoint",
    "rotate_after_save",
    "rotate_checkpoints",
    "save_checkpoint",
    "save_model_files",
    "update_best_metric",
    "verify_checkpoint",
]


# ================================================================================ saving


def save_checkpoint(trainer: Any, metrics: Optional[Mapping[str, float]] = None, *, rotate: bool = True) -> Path:
    """Write ``output_dir/checkpoint-<global_step>`` and rotate old checkpoints.

    Every process calls this (gathering sharded weights may be collective); only the processes
    for which ``args.should_save`` holds write. ``metrics`` are the evaluation metrics of this
    step, if any; they may make this checkpoint the best one. ``rotate=False`` leaves rotation
    to the caller: the Trainer rotates (``rotate_after_save``) after ``treadle_on_save``, so a
    plugin sees every checkpoint before rotation and can hold the ones it still reads.
    """
    args, state, strategy = trainer.args, trainer.state, trainer.strategy
    output_dir = Path(args.output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}-{state.global_step}"
    started = time.perf_counter()

    update_best_metric(args, state, metrics)
    if args.metric_for_best_model and state.best_global_step == state.global_step:
        state.best_model_checkpoint = str(final)

    run_state.record_callback_states(trainer)
    training = None if args.save_only_model else run_state.collect(trainer)
    writer = _is_writer(args, strategy)

    strategy.barrier("treadle-checkpoint-begin")
    staging = output_dir / f"{INCOMPLETE_PREFIX}{final.name}"
    if writer:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            _remove_leftovers(output_dir)
            staging.mkdir()
        except OSError as exc:
            raise CheckpointError(
                f"could not create {staging}: {exc}. The earlier checkpoints are intact; fix --output_dir "
                "(free space, permissions), then resume with --resume_from_checkpoint true"
            ) from exc
    strategy.barrier("treadle-checkpoint-staging")
    if training is not None and strategy.world_size > 1 and staging.is_dir():
        run_state.write_process_rng(staging, training, strategy.global_rank)
    strategy.barrier("treadle-checkpoint-rng")
    optimizer = None if training is None else trainer.optimizer
    try:
        written = strategy.save_checkpoint(staging, trainer.model, optimizer, writer=writer)
    except BaseException:
        if writer:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    pickled = sorted(set(_gathered_pickled(strategy, written)))
    strategy.barrier("treadle-checkpoint-strategy")
    if writer:
        try:
            write_model_files(staging, strategy.unwrap_model(trainer.model), None, args)
            processing = write_processing_files(staging, getattr(trainer, "processing_class", None))
            if training is not None:
                run_state.write(staging, training, single_process=strategy.world_size == 1)
            state.save_to_json(str(staging / TRAINER_STATE_NAME))
            kind = KIND_MODEL_ONLY if training is None else KIND_FULL
            facts = {"kind": kind, "global_step": state.global_step, "world_size": strategy.world_size,
                     "strategy": getattr(strategy, "name", "")}
            if pickled:
                facts["pickled"] = pickled
            if processing:
                facts["processing_files"] = processing
            write_manifest(staging, **facts)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise CheckpointError(
                f"could not write {final}: {exc}. The earlier checkpoints are intact; free some space or "
                "choose another --output_dir, then resume with --resume_from_checkpoint true"
            ) from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _publish(staging, final)
        if rotate:
            rotate_after_save(trainer, final)
    strategy.barrier("treadle-checkpoint-end")
    logger.debug("saved %s in %.3fs", final, time.perf_counter() - started)
    return final


def _gathered_pickled(strategy: Any, written: Any) -> list[str]:
    """Every process's ``CheckpointWrite.pickled`` (the writer records them in the manifest)."""
    own = list(getattr(written, "pickled", None) or [])
    if strategy.world_size == 1:
        return own
    return [name for names in strategy.all_gather_object(own) for name in names]


def write_full_state(strategy: Any, staging_dir: Path, model: Any, optimizer: Any, *, writer: bool) -> None:
    """The default ``Strategy.save_checkpoint``: full weights and optimizer state from the writer.

    ``model_state_dict`` / ``optimizer_state_dict`` are called on every process (a strategy may
    gather them collectively); only the writer writes ``model.safetensors`` and ``optimizer.*``.
    """
    model_state = strategy.model_state_dict(model)
    optimizer_state = None if optimizer is None else strategy.optimizer_state_dict(optimizer)
    if not writer:
        return
    write_weights(Path(staging_dir) / WEIGHTS_NAME, model_state)
    if optimizer_state is not None:
        save_state_files(Path(staging_dir), "optimizer", optimizer_state, where="optimizer")


def read_full_state(strategy: Any, directory: Path, model: Any, optimizer: Any, manifest: Mapping[str, Any]) -> None:
    """The default ``Strategy.load_checkpoint``: what ``write_full_state`` wrote."""
    directory = Path(directory)
    with _does_not_fit(directory / WEIGHTS_NAME, "the model"):
        strategy.load_model_state_dict(model, read_weights(checkpoint_file(directory, manifest, WEIGHTS_NAME)))
    if optimizer is None:
        return
    if "optimizer.json" not in manifest["files"]:
        logger.warning("%s holds no optimizer state; the optimizer starts from its current state", directory)
        return
    state = load_state_files(directory, "optimizer", lambda name: checkpoint_file(directory, manifest, name))
    with _does_not_fit(directory / "optimizer.json", "the optimizer (another --optim, or other parameters?)"):
        strategy.load_optimizer_state_dict(optimizer, state)


def checkpoint_file(directory: Union[str, os.PathLike], manifest: Mapping[str, Any], name: str) -> Path:
    """The path of ``name`` (``/``-separated, relative) in a verified checkpoint; a file the
    manifest does not list is a ``CheckpointError`` (for strategies reading their own files)."""
    return manifest_file(Path(directory), manifest, name)


def pickled_files(manifest: Mapping[str, Any]) -> list[str]:
    """Files of a checkpoint that its strategy could only write with pickle (see ``CheckpointWrite``)."""
    return list(manifest.get("pickled", []))


def processing_files(manifest: Mapping[str, Any]) -> list[str]:
    """Files of a checkpoint that the run's ``processing_class`` (tokenizer, processor) wrote with
    its ``save_pretrained``: with the weights and config, what ``from_pretrained`` reads (a hub
    upload of the model takes them along). Checked by the manifest like every other file."""
    return list(manifest.get("processing_files", []))


def save_model_files(trainer: Any, output_dir: Union[str, os.PathLike]) -> Path:
    """Write the model (weights, config, ``training_args.json``) to ``output_dir``.

    Each file is replaced atomically, so an interrupted save keeps the previous complete file.
    Every process calls this; the ones for which ``args.should_save`` holds write.
    """
    directory = Path(output_dir)
    model_state = trainer.strategy.model_state_dict(trainer.model)
    if _is_writer(trainer.args, trainer.strategy):
        model = trainer.strategy.unwrap_model(trainer.model)
        processing = getattr(trainer, "processing_class", None)
        replace_files_atomically(
            directory, lambda staging: write_model_files(staging, model, model_state, trainer.args, processing)
        )
    trainer.strategy.barrier("treadle-save-model")
    return directory


def update_best_metric(args: TrainingArguments, state: Any, metrics: Optional[Mapping[str, float]]) -> bool:
    """Record ``metrics[metric_for_best_model]`` in ``state`` if it beats ``state.best_metric``.

    The metric may be named with or without its ``eval_`` prefix. Returns whether this step is
    the new best. Calling it twice with the same metrics is harmless (the Trainer may call it
    after evaluating, to decide a ``save_strategy="best"`` save, and the save calls it again).
    """
    name = getattr(args, "metric_for_best_model", None)
    if not name or not metrics:
        return False
    key = best_metric_key(args)
    if key not in metrics:
        available = ", ".join(sorted(metrics)) or "none"
        raise UsageError(
            f"metric_for_best_model={name!r}: the evaluation returned no {key!r} (it returned: {available}); "
            "set --metric_for_best_model to one of those names (the eval_ prefix is optional)"
        )
    value = float(metrics[key])
    improved = is_improvement(args, value, state.best_metric)
    if improved:
        state.best_metric = value
        state.best_global_step = state.global_step
    return improved


def _is_writer(args: Any, strategy: Any) -> bool:
    if getattr(args, "save_on_each_node", False):
        return bool(strategy.is_local_zero)
    return bool(strategy.is_global_zero)


def _publish(staging: Path, final: Path) -> None:
    """Rename the finished staging directory to its real name, durably."""
    if final.exists():  # a checkpoint of the same step from an earlier run: replace it
        _retire(final)
    os.rename(staging, final)
    fsync_path(final.parent)


def _retire(path: Path) -> None:
    """Delete a checkpoint so that no crash leaves it half-deleted under its real name."""
    doomed = path.parent / f"{DOOMED_PREFIX}{path.name}"
    if doomed.exists():
        shutil.rmtree(doomed)
    os.rename(path, doomed)
    fsync_path(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_leftovers(output_dir: Path) -> None:
    """Delete staging and doomed directories that a crashed save or rotation left behind."""
    for path in output_dir.iterdir():
        if path.is_dir() and path.name.startswith((INCOMPLETE_PREFIX, DOOMED_PREFIX)):
            shutil.rmtree(path, ignore_errors=True)


# ================================================================================ rotation


def list_checkpoints(output_dir: Union[str, os.PathLike]) -> list[Path]:
    """The ``checkpoint-<step>`` directories in ``output_dir``, oldest step first."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def rotate_after_save(trainer: Any, newest: Optional[Path]) -> list[Path]:
    """``save_total_limit`` rotation after a save, on the processes that write checkpoints.

    Checkpoints held with ``Trainer.hold_checkpoint`` (a background upload still reads them)
    are left in place; the first rotation after their release deletes them.
    """
    args = trainer.args
    if not _is_writer(args, trainer.strategy):
        return []
    holds = getattr(trainer, "checkpoint_holds", None)
    return rotate_checkpoints(
        args.output_dir, args.save_total_limit, best=trainer.state.best_model_checkpoint, newest=newest,
        held=holds.held() if holds is not None else (),
    )


def rotate_checkpoints(
    output_dir: Union[str, os.PathLike],
    limit: Optional[int],
    *,
    best: Optional[Union[str, os.PathLike]] = None,
    newest: Optional[Path] = None,
    held: Iterable[Path] = (),
) -> list[Path]:
    """Delete old checkpoints beyond ``limit``; never the ``best`` one nor the ``newest`` one.

    The best checkpoint counts towards the limit (``limit=5`` keeps the best and the four most
    recent) except when ``limit=1``: then the best and the newest are both kept. A checkpoint
    in ``held`` (resolved paths) is not deleted now, whatever the limit says. Returns the
    deleted directories.
    """
    if limit is None or limit <= 0:
        return []
    checkpoints = list_checkpoints(output_dir)
    if newest is not None and newest in checkpoints:  # the one just written is newest by definition
        checkpoints.remove(newest)
        checkpoints.append(newest)
    best_path = _same_checkpoint(best, checkpoints)
    keep = checkpoints[-limit:]
    if best_path is not None and best_path not in keep:
        others = [p for p in checkpoints if p != best_path]
        keep = others[-max(limit - 1, 1):] + [best_path]
    held = set(held)
    deleted = []
    for path in (p for p in checkpoints if p not in keep):
        if held and path.resolve() in held:
            logger.info("keeping %s beyond save_total_limit=%d while a plugin still reads it", path, limit)
            continue
        deleted.append(path)
    for path in deleted:
        logger.info("deleting %s (save_total_limit=%d)", path, limit)
        _retire(path)
    return deleted


def _same_checkpoint(best: Optional[Union[str, os.PathLike]], checkpoints: list[Path]) -> Optional[Path]:
    if not best:
        return None
    target = Path(best).resolve()
    return next((p for p in checkpoints if p.resolve() == target), None)


# ================================================================================ resuming


def resolve_resume_checkpoint(
    resume_from_checkpoint: Any, output_dir: Union[str, os.PathLike, None], args: Any = None
) -> Optional[Path]:
    """Turn ``resume_from_checkpoint`` into a verified checkpoint directory, or None.

    ``None``/``False``/``"false"``: no resume. ``True``/``"true"``: the newest valid checkpoint
    in ``output_dir`` (damaged newer ones are skipped with a warning). A path: that checkpoint,
    which must be valid. ``scheme:location`` (``hub:org/name``), when no such local path exists:
    the checkpoint a plugin fetches (``treadle_fetch_checkpoint``, given ``args``).
    """
    path = _requested_checkpoint(resume_from_checkpoint, output_dir, args)
    if path is None:
        return None
    if _asked_for_newest(resume_from_checkpoint):
        return _newest_valid_checkpoint(path)
    _verify_resumable(path)
    return path


def resolve_weights_checkpoint(
    resume_from_checkpoint: Any, output_dir: Union[str, os.PathLike, None], args: Any = None
) -> Optional[Path]:
    """Like ``resolve_resume_checkpoint`` for evaluate / predict, which need only the weights.

    So a ``save_only_model`` checkpoint qualifies, and a damaged optimizer file does not matter:
    when the checkpoint has a ``model.safetensors``, only its manifest entry is verified. A
    checkpoint whose strategy wrote the weights its own way (sharded) is verified whole, since
    the core cannot tell which of its files hold them.
    """
    path = _requested_checkpoint(resume_from_checkpoint, output_dir, args)
    if path is None:
        return None
    if _asked_for_newest(resume_from_checkpoint):
        return _newest_valid_checkpoint(path, check=verify_weights)
    verify_weights(path)
    return path


def verify_weights(path: Path) -> dict[str, Any]:
    """Verify what loading the weights of checkpoint ``path`` reads; return its manifest."""
    manifest = verify_files(path, [])
    if WEIGHTS_NAME in manifest["files"]:
        return verify_files(path, [WEIGHTS_NAME])
    return verify_checkpoint(path)


def load_weights(trainer: Any, path: Union[str, os.PathLike]) -> None:
    """Load only the model weights of checkpoint ``path``, through the run's strategy."""
    directory = Path(path)
    trainer.strategy.load_checkpoint(directory, trainer.model, None, verify_weights(directory))


def _asked_for_newest(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _requested_checkpoint(value: Any, output_dir: Union[str, os.PathLike, None], args: Any = None) -> Optional[Path]:
    """None for no checkpoint, the output dir to search for ``true``, else the named checkpoint path."""
    if isinstance(value, str) and value.strip().lower() in ("", "false", "none"):
        return None
    if value is None or value is False:
        return None
    if _asked_for_newest(value):
        return Path(output_dir or ".")
    path = fetch_checkpoint(value, args) or Path(value)
    if not (path / MANIFEST_NAME).exists() and list_checkpoints(path):
        raise CheckpointError(
            f"resume_from_checkpoint={value}: {path} is an output directory, not a checkpoint; pass one of its "
            "checkpoint-<step> directories, or true for the newest valid one"
        )
    return path


_REMOTE_LOCATION = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):")
"""``scheme:rest``, e.g. ``hub:org/name`` or ``s3://bucket/run``; a one-letter one (``C:``) is a drive."""


def fetch_checkpoint(value: Any, args: Any = None) -> Optional[Path]:
    """The local copy of a checkpoint named ``scheme:location`` (no such local path), fetched by a
    plugin (``treadle_fetch_checkpoint``); None for anything else."""
    if not isinstance(value, str) or Path(value).exists():
        return None
    match = _REMOTE_LOCATION.match(value.strip())
    if match is None:
        return None
    from treadle.plugins import get_plugin_manager

    found = get_plugin_manager().pm.hook.treadle_fetch_checkpoint(location=value.strip(), args=args)
    if found is None:
        raise CheckpointError(
            f"resume_from_checkpoint={value}: no such directory, and no installed plugin fetches "
            f"'{match.group('scheme')}:' checkpoints (see `treadle plugins`)"
        )
    return Path(found)


def _verify_resumable(path: Path) -> None:
    _require_resumable(path, verify_checkpoint(path))


def _newest_valid_checkpoint(output_dir: Path, check: Any = _verify_resumable) -> Path:
    candidates = list(reversed(list_checkpoints(output_dir)))
    if not candidates:
        raise CheckpointError(
            f"resume_from_checkpoint=true: there is no checkpoint-<step> directory in {output_dir}. "
            "Start without --resume_from_checkpoint, or pass the path of a checkpoint directory."
        )
    skipped = []
    for path in candidates:
        try:
            check(path)
        except CheckpointError as exc:
            logger.warning("not resuming from %s: %s", path.name, exc)
            skipped.append(f"{path.name}: {exc}")
            continue
        if skipped:
            logger.warning(
                "resuming from %s, the newest valid checkpoint (skipped newer ones: %s)",
                path, ", ".join(s.split(":")[0] for s in skipped),
            )
        return path
    raise CheckpointError(
        f"resume_from_checkpoint=true: no valid checkpoint in {output_dir}:\n  " + "\n  ".join(skipped)
    )


def _require_resumable(path: Path, manifest: Mapping[str, Any]) -> None:
    if manifest.get("kind") == KIND_MODEL_ONLY:
        raise CheckpointError(
            f"{path} was saved with save_only_model=true: it holds the weights but no optimizer, scheduler or "
            "RNG state, so training cannot resume from it. Resume from a full checkpoint, or load its "
            "model.safetensors into the model and start a new run."
        )


def load_checkpoint(trainer: Any, path: Union[str, os.PathLike]) -> None:
    """Restore everything ``save_checkpoint`` stored into the (already built) trainer.

    Weights, optimizer, scheduler, precision state, trainer state, plugin states, callback
    states (with ``restore_callback_states_from_checkpoint``) and last the RNG states, so that
    nothing drawn during the restore shifts the random streams.
    """
    directory = Path(path)
    started = time.perf_counter()
    manifest = verify_checkpoint(directory)
    _require_resumable(directory, manifest)
    strategy = trainer.strategy

    def need(name: str) -> Path:
        return manifest_file(directory, manifest, name)

    def saved(stem: str, component: Any) -> Any:
        """The stored state of ``component``, or None (with a warning when it was not stored)."""
        if component is None:
            return None
        if f"{stem}.json" not in manifest["files"]:
            logger.warning("%s holds no %s state; the %s starts from its current state", directory, stem, stem)
            return None
        return load_state_files(directory, stem, need)

    strategy.load_checkpoint(directory, trainer.model, trainer.optimizer, manifest)
    if (scheduler_state := saved("scheduler", getattr(trainer, "lr_scheduler", None))) is not None:
        with _does_not_fit(directory / "scheduler.json", "the learning-rate scheduler"):
            trainer.lr_scheduler.load_state_dict(scheduler_state)
    if (precision_state := saved("precision", getattr(trainer, "precision", None))) is not None:
        with _does_not_fit(directory / "precision.json", "the precision plugin"):
            trainer.precision.load_state_dict(precision_state)
    _restore_trainer_state(trainer, need(TRAINER_STATE_NAME))
    if "plugin_states.json" in manifest["files"] and getattr(trainer, "run_hooks", None) is not None:
        states = run_state.plugin_states_for_this_run(trainer.run_hooks, load_state_files(directory, "plugin_states", need))
        trainer.run_hooks.call("treadle_load_checkpoint_state", trainer=trainer, states=states)
    if getattr(trainer.args, "restore_callback_states_from_checkpoint", False):
        run_state.restore_callback_states(trainer)
    rng_stem = run_state.rng_state_stem(directory, manifest, strategy)
    run_state.restore_rng_state(trainer, load_state_files(directory, rng_stem, need))
    logger.debug("loaded %s in %.3fs", directory, time.perf_counter() - started)


def load_best_model(trainer: Any) -> bool:
    """Load the weights of ``state.best_model_checkpoint`` (``load_best_model_at_end``).

    Returns whether a best model was loaded. A missing or damaged best checkpoint is a warning,
    not an error: training itself succeeded, and the final weights stay in place.
    """
    best = trainer.state.best_model_checkpoint
    if not best or not Path(best).is_dir():
        logger.warning("load_best_model_at_end: no best checkpoint to load (best_model_checkpoint=%s)", best)
        return False
    directory = Path(best)
    try:
        manifest = verify_checkpoint(directory)
        trainer.strategy.load_checkpoint(directory, trainer.model, None, manifest)
    except CheckpointError as exc:
        logger.error("load_best_model_at_end: cannot load the best model (%s); keeping the final weights", exc)
        return False
    logger.info("loaded the best model from %s (%s = %s)", directory, trainer.args.metric_for_best_model, trainer.state.best_metric)
    return True


@contextlib.contextmanager
def _does_not_fit(path: Path, what: str) -> Iterator[None]:
    """Turn a state-dict mismatch into a CheckpointError naming the file and the component."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path} does not fit {what} of this run: {str(exc).rstrip('.')}. Resume with the model and settings the "
            "checkpoint was trained with, or start a new run."
        ) from exc


def _restore_trainer_state(trainer: Any, path: Path) -> None:
    """Replace the trainer's state by the saved one, keeping the object others may hold."""
    with unreadable_file_is_checkpoint_error(path):
        loaded = type(trainer.state).load_from_json(str(path))
    current = trainer.state
    saved_batch, batch = getattr(loaded, "train_batch_size", None), getattr(current, "train_batch_size", None)
    if saved_batch and batch and saved_batch != batch:
        logger.warning(
            "%s was trained with a batch size of %d per device, this run uses %d: the data position "
            "and the number of samples seen will not match the original run",
            path.parent, saved_batch, batch,
        )
    if hasattr(current, "__dict__") and type(loaded) is type(current):
        current.__dict__.update(loaded.__dict__)
    else:
        trainer.state = loaded


