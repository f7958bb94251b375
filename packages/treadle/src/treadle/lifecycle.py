"""How a run ends: ``run_end`` once after its last metrics, or ``exception`` once when it fails.

A run opens when training begins (or at the first log outside training, e.g. ``treadle
evaluate``). Reporters such as wandb or mlflow hold a remote run for it, so it must be closed
exactly once, and only after the last metrics: ``Trainer.train`` ends with ``train_end``, but
the final evaluation of ``treadle train`` comes after that and belongs to the same run. Hence:

* ``treadle train | evaluate | predict`` end the run when the command is done
  (``with trainer:`` in ``treadle.run``);
* from Python, ``Trainer.end_run()`` or leaving ``with Trainer(...) as trainer:`` ends it, and
  a run still open when the interpreter exits is ended then (``atexit``), so a script that calls
  ``train()`` then ``evaluate()`` gets one run with both;
* an exception out of ``train()`` (or the command) fires ``exception`` instead, before it
  propagates; reporters mark their runs failed.

Either way the strategy (and through it the backend) is torn down afterwards, also when a
closing hook raises. A closing hook that raises is a warning: one broken reporter must not keep
the others from closing, nor hide the exception that ended the run.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from typing import Any

logger = logging.getLogger("treadle")

_open_trainers: weakref.WeakSet = weakref.WeakSet()
_atexit_registered = False


def open_run(trainer: Any) -> None:
    """Note that ``trainer`` has an open run (reporters may hold remote runs from now on)."""
    global _atexit_registered
    trainer._run_open = True
    _open_trainers.add(trainer)
    if not _atexit_registered:
        # Registered after the first reporter opened its run, so this handler runs before the
        # exit handlers its library registered then (atexit calls them last-in, first-out).
        atexit.register(_end_open_runs)
        _atexit_registered = True


def end_run(trainer: Any) -> None:
    """Fire ``run_end`` if a run is open, then tear the strategy down (idempotent)."""
    try:
        if getattr(trainer, "_run_open", False):
            _close(trainer)
            trainer._events.call_each("run_end", trainer, trainer.args, trainer.state, trainer.control, {}, _warn)
    finally:
        teardown(trainer)


def fail_run(trainer: Any, exception: BaseException) -> None:
    """Fire ``exception`` once for ``exception``, then tear the strategy down; never raises."""
    try:
        if getattr(trainer, "_failed_with", None) is not exception:
            trainer._failed_with = exception
            _close(trainer)
            extra = {"exception": exception}
            trainer._events.call_each("exception", trainer, trainer.args, trainer.state, trainer.control, extra, _warn)
    except Exception as exc:  # noqa: BLE001 - the run's own exception is the one to report
        _warn("exception", "treadle", exc)
    finally:
        try:
            teardown(trainer)
        except Exception as exc:  # noqa: BLE001
            _warn("teardown", "strategy", exc)


def teardown(trainer: Any) -> None:
    """``strategy.teardown()`` (which releases the backend) once per set-up of the environment."""
    if getattr(trainer, "_torn_down", False):
        return
    trainer._torn_down = True
    trainer.strategy.teardown()


def ensure_environment(trainer: Any) -> None:
    """Set the strategy's environment up again if a previous run tore it down (a second ``train``)."""
    if getattr(trainer, "_torn_down", False):
        trainer.strategy.setup_environment()
        trainer._torn_down = False


def _close(trainer: Any) -> None:
    trainer._run_open = False
    _open_trainers.discard(trainer)


def _end_open_runs() -> None:
    for trainer in list(_open_trainers):
        try:
            end_run(trainer)
        except Exception as exc:  # noqa: BLE001 - at exit, a warning is all that can be done
            _warn("run_end", "treadle", exc)


def _warn(event: str, plugin: str, exc: BaseException) -> None:
    logger.warning("%s of %s failed: %s: %s", event, plugin, type(exc).__name__, exc)
