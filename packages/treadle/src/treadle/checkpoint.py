"""Checkpoints: what goes in one, how it is written so a crash never leaves a fake, how it is read.

Layout (the seeds' ``output_dir/checkpoint-<global_step>/``)::

    model.safetensors            weights (tied tensors once)      } also what save_model writes
    config.json                  the model's config, if it has one }
    training_args.json           the arguments, tokens masked     }
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
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Optional, Union

from treadle.__about__ import __version__
from treadle.errors import CheckpointError, UsageError
from treadle.model_files import WEIGHTS_NAME, read_weights, replace_files_atomically, write_model_files
from treadle.serialization import dump_json, fsync_path, load_state_files, save_state_files, write_bytes_durably

if TYPE_CHECKING:
    from treadle.args import TrainingArguments

logger = logging.getLogger("treadle.checkpoint")

CHECKPOINT_PREFIX = "checkpoint"
CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")
INCOMPLETE_PREFIX = ".incomplete-"
DOOMED_PREFIX = ".deleting-"
MANIFEST_NAME = "manifest.json"
TRAINER_STATE_NAME = "trainer_state.json"
MANIFEST_FORMAT = "treadle-checkpoint"
MANIFEST_VERSION = 1
KIND_FULL = "full"
KIND_MODEL_ONLY = "model-only"

_HASH_CHUNK = 1 << 20

__all__ = [
    "CHECKPOINT_PREFIX",
    "capture_rng_state",
    "list_checkpoints",
    "load_best_model",
    "load_checkpoint",
    "resolve_resume_checkpoint",
    "rotate_checkpoints",
    "save_checkpoint",
    "save_model_files",
    "update_best_metric",
    "verify_checkpoint",
]


# ================================================================================ saving


def save_checkpoint(trainer: Any, metrics: Optional[Mapping[str, float]] = None) -> Path:
    """Write ``output_dir/checkpoint-<global_step>`` and rotate old checkpoints.

    Every process calls this (gathering sharded weights may be collective); only the processes
    for which ``args.should_save`` holds write. ``metrics`` are the evaluation metrics of this
    step, if any; they may make this checkpoint the best one.
    """
    args, state, strategy = trainer.args, trainer.state, trainer.strategy
    output_dir = Path(args.output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}-{state.global_step}"
    started = time.perf_counter()

    update_best_metric(args, state, metrics)
    if args.metric_for_best_model and state.best_global_step == state.global_step:
        state.best_model_checkpoint = str(final)

    _record_callback_states(trainer)
    model_state = strategy.model_state_dict(trainer.model)
    training = None if args.save_only_model else _training_state(trainer)
    writer = _is_writer(args, strategy)

    strategy.barrier("treadle-checkpoint-begin")
    staging = output_dir / f"{INCOMPLETE_PREFIX}{final.name}"
    if writer:
        output_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(output_dir)
        staging.mkdir()
    strategy.barrier("treadle-checkpoint-staging")
    if training is not None and strategy.world_size > 1 and staging.is_dir():
        save_state_files(staging, f"rng_state_{strategy.global_rank}", training["rng_state"], where="rng_state")
    strategy.barrier("treadle-checkpoint-rng")
    if writer:
        try:
            write_model_files(staging, strategy.unwrap_model(trainer.model), model_state, args)
            if training is not None:
                _write_training_state(staging, training, single_process=strategy.world_size == 1)
            state.save_to_json(str(staging / TRAINER_STATE_NAME))
            kind = KIND_MODEL_ONLY if training is None else KIND_FULL
            _write_manifest(staging, state.global_step, kind, strategy.world_size)
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
        rotate_checkpoints(output_dir, args.save_total_limit, best=state.best_model_checkpoint, newest=final)
    strategy.barrier("treadle-checkpoint-end")
    logger.debug("saved %s in %.3fs", final, time.perf_counter() - started)
    return final


def save_model_files(trainer: Any, output_dir: Union[str, os.PathLike]) -> Path:
    """Write the model (weights, config, ``training_args.json``) to ``output_dir``.

    Each file is replaced atomically, so an interrupted save keeps the previous complete file.
    Every process calls this; the ones for which ``args.should_save`` holds write.
    """
    directory = Path(output_dir)
    model_state = trainer.strategy.model_state_dict(trainer.model)
    if _is_writer(trainer.args, trainer.strategy):
        model = trainer.strategy.unwrap_model(trainer.model)
        replace_files_atomically(directory, lambda staging: write_model_files(staging, model, model_state, trainer.args))
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
    key = name if name.startswith("eval_") else f"eval_{name}"
    if key not in metrics:
        available = ", ".join(sorted(metrics)) or "none"
        raise UsageError(
            f"metric_for_best_model={name!r}: the evaluation returned no {key!r} (it returned: {available}); "
            "set --metric_for_best_model to one of those names (the eval_ prefix is optional)"
        )
    value = float(metrics[key])
    if math.isnan(value):
        return False
    greater = args.greater_is_better
    if greater is None:
        greater = not name.endswith("loss")
    best = state.best_metric
    improved = best is None or (value > best if greater else value < best)
    if improved:
        state.best_metric = value
        state.best_global_step = state.global_step
    return improved


def _is_writer(args: Any, strategy: Any) -> bool:
    if getattr(args, "save_on_each_node", False):
        return bool(strategy.is_local_zero)
    return bool(strategy.is_global_zero)


def _training_state(trainer: Any) -> dict[str, Any]:
    """Everything besides the weights that an exact resume needs, gathered on every process."""
    hooks = getattr(trainer, "run_hooks", None)
    return {
        "optimizer": None if trainer.optimizer is None else trainer.strategy.optimizer_state_dict(trainer.optimizer),
        "scheduler": None if getattr(trainer, "lr_scheduler", None) is None else trainer.lr_scheduler.state_dict(),
        "precision": trainer.precision.state_dict() if getattr(trainer, "precision", None) is not None else {},
        "plugin_states": _plugin_states(trainer, hooks) if hooks is not None else {},
        "rng_state": capture_rng_state(trainer),
    }


def _write_training_state(directory: Path, training: dict[str, Any], *, single_process: bool) -> None:
    for stem, tree in training.items():
        if stem == "rng_state" and not single_process:
            continue  # each process wrote its own rng_state_<rank>
        if tree is not None:
            save_state_files(directory, stem, tree, where=stem)


def _plugin_states(trainer: Any, hooks: Any) -> dict[str, Any]:
    """Each plugin's ``treadle_checkpoint_state``, keyed by its run-independent name."""
    impls = hooks.impls("treadle_checkpoint_state")
    names = stable_plugin_names([impl.plugin_name for impl in impls])
    states = {}
    for impl in impls:
        kwargs = {"trainer": trainer} if "trainer" in impl.argnames else {}
        value = impl.function(**kwargs)
        if value is not None:
            states[names[impl.plugin_name]] = value
    return states


def stable_plugin_names(names: Iterable[str]) -> dict[str, str]:
    """Map plugin names to names that are the same in the next run.

    A user callback is registered as ``callback:<Class>:<object id>``; the id changes from run
    to run, so its state is stored as ``callback:<Class>`` (``#2``, ``#3`` for further
    instances of the class, in registration order). Other names are already stable.
    """
    stable: dict[str, str] = {}
    seen: dict[str, int] = {}
    for name in names:
        match = _CALLBACK_NAME_RE.match(name)
        if match is None:
            stable[name] = name
            continue
        base = match.group(1)
        seen[base] = seen.get(base, 0) + 1
        stable[name] = base if seen[base] == 1 else f"{base}#{seen[base]}"
    return stable


_CALLBACK_NAME_RE = re.compile(r"^(callback:[^:]+):[0-9a-f]+$")


def _states_for_this_run(hooks: Any, saved: Mapping[str, Any]) -> dict[str, Any]:
    """The saved plugin states under their stable names and under this run's plugin names."""
    states = dict(saved)
    current = [impl.plugin_name for impl in hooks.impls("treadle_checkpoint_state")]
    for name, stable in stable_plugin_names(current).items():
        if stable in saved:
            states[name] = saved[stable]
    return states


def _record_callback_states(trainer: Any) -> None:
    """Put each stateful callback's ``state()`` into ``state.stateful_callbacks`` by class name.

    A class with several instances gets a list, in registration order.
    """
    getter = getattr(trainer, "stateful_callbacks", None)
    if getter is None or not hasattr(trainer.state, "stateful_callbacks"):
        return
    states: dict[str, Any] = {}
    for callback in getter():
        name = type(callback).__name__
        if name in states:
            previous = states[name]
            states[name] = (previous if isinstance(previous, list) else [previous]) + [callback.state()]
        else:
            states[name] = callback.state()
    trainer.state.stateful_callbacks = states


def capture_rng_state(trainer: Any) -> dict[str, Any]:
    """Every random generator a resume must restore: python, numpy, torch CPU, the device's."""
    import random

    import numpy as np
    import torch

    backend = getattr(trainer, "backend", None)
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
        "device": backend.rng_state() if backend is not None else {},
    }


def _write_manifest(directory: Path, step: int, kind: str, world_size: int) -> None:
    """Hash and fsync every file in ``directory``, then write the manifest and fsync the dir."""
    paths = sorted(p for p in directory.iterdir() if p.is_file())
    digests = _map_files(lambda path: _sha256(path, fsync=True), paths)
    files = {path.name: {"size": path.stat().st_size, "sha256": digest} for path, digest in zip(paths, digests)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "kind": kind,
        "global_step": step,
        "world_size": world_size,
        "treadle_version": __version__,
        "files": files,
    }
    write_bytes_durably(directory / MANIFEST_NAME, dump_json(manifest))
    fsync_path(directory)


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


def rotate_checkpoints(
    output_dir: Union[str, os.PathLike],
    limit: Optional[int],
    *,
    best: Optional[Union[str, os.PathLike]] = None,
    newest: Optional[Path] = None,
) -> list[Path]:
    """Delete old checkpoints beyond ``limit``; never the ``best`` one nor the ``newest`` one.

    The best checkpoint counts towards the limit (``limit=5`` keeps the best and the four most
    recent) except when ``limit=1``: then the best and the newest are both kept. Returns the
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
    deleted = [p for p in checkpoints if p not in keep]
    for path in deleted:
        logger.info("deleting %s (save_total_limit=%d)", path, limit)
        _retire(path)
    return deleted


def _same_checkpoint(best: Optional[Union[str, os.PathLike]], checkpoints: list[Path]) -> Optional[Path]:
    if not best:
        return None
    target = Path(best).resolve()
    return next((p for p in checkpoints if p.resolve() == target), None)


# ================================================================================ verification


def verify_checkpoint(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Check a checkpoint against its manifest; return the manifest or raise ``CheckpointError``.

    The verdict is cached for files whose size and modification time have not changed, so
    resolving and then loading a checkpoint hashes it only once.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    manifest = _read_manifest(directory)
    signature = _signature(directory, manifest)
    if _verified.get(str(directory.resolve())) == signature:
        return manifest
    _map_files(lambda item: _check_file(directory, *item), list(manifest["files"].items()))
    _verified[str(directory.resolve())] = signature
    return manifest


_verified: dict[str, tuple] = {}


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        hint = ""
        if list_checkpoints(directory):
            hint = " It holds checkpoint directories itself: pass one of them, or true for the newest."
        raise CheckpointError(
            f"{path} is missing: {directory} is not a complete treadle checkpoint (its save was interrupted, "
            f"or another tool wrote it). Resume from another checkpoint (--resume_from_checkpoint true picks the "
            f"newest complete one).{hint}"
        )
    try:
        manifest = json.loads(path.read_text("utf-8"))
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError("not a treadle checkpoint manifest")
        for name, entry in files.items():
            if "/" in name or "\\" in name or name in ("", ".", "..") or not {"size", "sha256"} <= set(entry):
                raise ValueError(f"bad file entry {name!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path} is unreadable or damaged ({exc}); this checkpoint cannot be trusted, resume from another one"
        ) from None
    return manifest


def _check_file(directory: Path, name: str, entry: Mapping[str, Any]) -> None:
    path = directory / name
    advice = "the checkpoint is damaged; resume from another one (--resume_from_checkpoint true skips damaged ones)"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (the manifest lists it); {advice}")
    size = path.stat().st_size
    if size != entry["size"]:
        raise CheckpointError(f"{path} has {size} bytes but the manifest says {entry['size']} (truncated?); {advice}")
    if _sha256(path) != entry["sha256"]:
        raise CheckpointError(f"{path} does not match its sha256 in the manifest (corrupted or modified); {advice}")


def _signature(directory: Path, manifest: Mapping[str, Any]) -> tuple:
    stats = []
    for name in [MANIFEST_NAME, *manifest["files"]]:
        try:
            st = (directory / name).stat()
            stats.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            stats.append((name, None))
    return tuple(stats)


def _sha256(path: Path, *, fsync: bool = False) -> str:
    """The file's sha256; with ``fsync``, also force its data to disk."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
        if fsync:
            os.fsync(fh.fileno())
    return digest.hexdigest()


def _map_files(work: Any, paths: list[Any]) -> list[Any]:
    """``[work(p) for p in paths]`` on a few threads (hashing and fsync release the GIL), in order."""
    if len(paths) < 2:
        return [work(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1, len(paths))) as pool:
        return list(pool.map(work, paths))


def _manifest_file(directory: Path, manifest: Mapping[str, Any], name: str) -> Path:
    """A file the load needs: it must be listed (hence verified) in the manifest."""
    if name not in manifest["files"]:
        raise CheckpointError(f"{directory / name} is not in the checkpoint's manifest; the checkpoint is incomplete")
    return directory / name


# ================================================================================ resuming


def resolve_resume_checkpoint(resume_from_checkpoint: Any, output_dir: Union[str, os.PathLike, None]) -> Optional[Path]:
    """Turn ``resume_from_checkpoint`` into a verified checkpoint directory, or None.

    ``None``/``False``/``"false"``: no resume. ``True``/``"true"``: the newest valid checkpoint
    in ``output_dir`` (damaged newer ones are skipped with a warning). A path: that checkpoint,
    which must be valid.
    """
    value = resume_from_checkpoint
    if isinstance(value, str) and value.strip().lower() in ("", "false", "none"):
        return None
    if value is None or value is False:
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() == "true"):
        return _newest_valid_checkpoint(Path(output_dir or "."))
    path = Path(value)
    manifest = verify_checkpoint(path)
    _require_resumable(path, manifest)
    return path


def _newest_valid_checkpoint(output_dir: Path) -> Path:
    candidates = list(reversed(list_checkpoints(output_dir)))
    if not candidates:
        raise CheckpointError(
            f"resume_from_checkpoint=true: there is no checkpoint-<step> directory in {output_dir}. "
            "Start without --resume_from_checkpoint, or pass the path of a checkpoint directory."
        )
    skipped = []
    for path in candidates:
        try:
            _require_resumable(path, verify_checkpoint(path))
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
        return _manifest_file(directory, manifest, name)

    def saved(stem: str, component: Any) -> Any:
        """The stored state of ``component``, or None (with a warning when it was not stored)."""
        if component is None:
            return None
        if f"{stem}.json" not in manifest["files"]:
            logger.warning("%s holds no %s state; the %s starts from its current state", directory, stem, stem)
            return None
        return load_state_files(directory, stem, need)

    with _does_not_fit(directory / WEIGHTS_NAME, "the model"):
        strategy.load_model_state_dict(trainer.model, read_weights(need(WEIGHTS_NAME)))
    if (optimizer_state := saved("optimizer", trainer.optimizer)) is not None:
        with _does_not_fit(directory / "optimizer.json", "the optimizer (another --optim, or other parameters?)"):
            strategy.load_optimizer_state_dict(trainer.optimizer, optimizer_state)
    if (scheduler_state := saved("scheduler", getattr(trainer, "lr_scheduler", None))) is not None:
        with _does_not_fit(directory / "scheduler.json", "the learning-rate scheduler"):
            trainer.lr_scheduler.load_state_dict(scheduler_state)
    if (precision_state := saved("precision", getattr(trainer, "precision", None))) is not None:
        with _does_not_fit(directory / "precision.json", "the precision plugin"):
            trainer.precision.load_state_dict(precision_state)
    _restore_trainer_state(trainer, need(TRAINER_STATE_NAME))
    if "plugin_states.json" in manifest["files"] and getattr(trainer, "run_hooks", None) is not None:
        states = _states_for_this_run(trainer.run_hooks, load_state_files(directory, "plugin_states", need))
        trainer.run_hooks.call("treadle_load_checkpoint_state", trainer=trainer, states=states)
    if getattr(trainer.args, "restore_callback_states_from_checkpoint", False):
        _restore_callback_states(trainer)
    _restore_rng_state(trainer, load_state_files(directory, _rng_state_file(directory, manifest, strategy), need))
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
        weights = read_weights(_manifest_file(directory, manifest, WEIGHTS_NAME))
    except CheckpointError as exc:
        logger.error("load_best_model_at_end: cannot load the best model (%s); keeping the final weights", exc)
        return False
    with _does_not_fit(directory / WEIGHTS_NAME, "the model"):
        trainer.strategy.load_model_state_dict(trainer.model, weights)
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


def _restore_callback_states(trainer: Any) -> None:
    """Give each stateful callback the state saved for its class (instances matched in order).

    The callback object stays the one registered with the run; its attributes are replaced by
    those of ``from_state(saved)``, so saved constructor arguments override the current ones.
    """
    getter = getattr(trainer, "stateful_callbacks", None)
    saved = getattr(trainer.state, "stateful_callbacks", None) or {}
    if getter is None:
        return
    pending = {name: list(value) if isinstance(value, list) else [value] for name, value in saved.items()}
    for callback in getter():
        queue = pending.get(type(callback).__name__)
        if queue:
            restored = type(callback).from_state(queue.pop(0))
            callback.__dict__.update(vars(restored))


def _rng_state_file(directory: Path, manifest: Mapping[str, Any], strategy: Any) -> str:
    own = f"rng_state_{strategy.global_rank}"
    if f"{own}.json" in manifest["files"]:
        return own
    if strategy.world_size > 1 or manifest.get("world_size", 1) > 1:
        logger.warning(
            "%s has no RNG state for process %d (saved with %s processes, now %d); random streams will differ "
            "from the original run",
            directory, strategy.global_rank, manifest.get("world_size", 1), strategy.world_size,
        )
    return "rng_state" if "rng_state.json" in manifest["files"] else "rng_state_0"


def _restore_rng_state(trainer: Any, state: Mapping[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    backend = getattr(trainer, "backend", None)
    if backend is not None and state.get("device"):
        backend.set_rng_state(state["device"])
