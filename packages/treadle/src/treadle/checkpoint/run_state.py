"""What a checkpoint keeps of a run besides the weights, and how each part is given back.

Optimizer, scheduler and precision state; each plugin's ``treadle_checkpoint_state``; the
stateful callbacks; the random generators of every process. ``collect`` gathers them on every
process (some strategies gather optimizer state collectively), ``write`` stores them with
``treadle.checkpoint.serialization`` (safetensors + JSON, no pickle), and the ``restore_*`` functions give
them back on resume.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from treadle.checkpoint.serialization import save_state_files

logger = logging.getLogger("treadle.checkpoint")


def collect(trainer: Any) -> dict[str, Any]:
    """Everything besides the weights and the optimizer (the strategy's ``save_checkpoint``
    writes those) that an exact resume needs, gathered on every process."""
    hooks = getattr(trainer, "run_hooks", None)
    return {
        "scheduler": None if getattr(trainer, "lr_scheduler", None) is None else trainer.lr_scheduler.state_dict(),
        "precision": trainer.precision.state_dict() if getattr(trainer, "precision", None) is not None else {},
        "plugin_states": _plugin_states(trainer, hooks) if hooks is not None else {},
        "rng_state": capture_rng_state(trainer),
    }


def write(directory: Path, training: dict[str, Any], *, single_process: bool) -> None:
    """Store what ``collect`` returned as ``<part>.json`` (+ ``.safetensors``) files in ``directory``."""
    for stem, tree in training.items():
        if stem == "rng_state" and not single_process:
            continue  # each process wrote its own rng_state_<rank>
        if tree is not None:
            save_state_files(directory, stem, tree, where=stem)


def write_process_rng(directory: Path, training: dict[str, Any], rank: int) -> None:
    """With several processes, each stores its own generators as ``rng_state_<rank>``."""
    save_state_files(directory, f"rng_state_{rank}", training["rng_state"], where="rng_state")


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


def plugin_states_for_this_run(hooks: Any, saved: Mapping[str, Any]) -> dict[str, Any]:
    """The saved plugin states under their stable names and under this run's plugin names."""
    states = dict(saved)
    current = [impl.plugin_name for impl in hooks.impls("treadle_checkpoint_state")]
    for name, stable in stable_plugin_names(current).items():
        if stable in saved:
            states[name] = saved[stable]
    return states


def record_callback_states(trainer: Any) -> None:
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


def restore_callback_states(trainer: Any) -> None:
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


def rng_state_stem(directory: Path, manifest: Mapping[str, Any], strategy: Any) -> str:
    """The RNG files of this process: ``rng_state_<rank>`` if saved, else the single-process ones."""
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


def restore_rng_state(trainer: Any, state: Mapping[str, Any]) -> None:
    """Put back what ``capture_rng_state`` returned (the last step of a resume)."""
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    backend = getattr(trainer, "backend", None)
    if backend is not None and state.get("device"):
        backend.set_rng_state(state["device"])
