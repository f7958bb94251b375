"""The core flow plugin: turns the logging / evaluation / save strategies into control flags.

It is registered first in every run and marked ``tryfirst``, so user callbacks run after it and
can still override what it decided. The loop itself never reads the strategies: it only acts on
``control``, which is what lets a callback change when things happen.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from treadle.markers import hookimpl


def option_value(value: Any) -> Any:
    """The plain value of an argument that may be given as an enum (``IntervalStrategy.STEPS``)."""
    return getattr(value, "value", value)


def best_metric_key(args: Any) -> str:
    """The metrics key compared for "best": ``metric_for_best_model`` with the ``eval_`` prefix."""
    name = args.metric_for_best_model or "loss"
    return name if name.startswith("eval_") else f"eval_{name}"


def greater_is_better(args: Any) -> bool:
    if args.greater_is_better is not None:
        return bool(args.greater_is_better)
    return not best_metric_key(args).endswith("loss")


def is_improvement(args: Any, value: float, best: Optional[float], threshold: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` (by more than ``threshold``) in the configured direction."""
    if value != value:  # NaN never improves anything
        return False
    if best is None:
        return True
    if greater_is_better(args):
        return value > best + threshold
    return value < best - threshold


def metric_to_compare(args: Any, metrics: Mapping[str, Any]) -> Optional[float]:
    value = metrics.get(best_metric_key(args))
    return None if value is None else float(value)


class FlowPlugin:
    """Decides ``should_log`` / ``should_evaluate`` / ``should_save`` / ``should_training_stop``."""

    def __init__(self) -> None:
        self._refresh(None)

    def _refresh(self, args: Any) -> None:
        """Cache the normalised strategies once per run: step_end runs on every optimizer step."""
        self._logging = option_value(args.logging_strategy) if args else "no"
        self._eval = option_value(args.eval_strategy) if args else "no"
        self._save = option_value(args.save_strategy) if args else "no"
        self._eval_delay = (args.eval_delay or 0) if args else 0
        self._log_first = bool(args.logging_first_step) if args else False

    @hookimpl(tryfirst=True)
    def treadle_on_train_begin(self, args: Any) -> None:
        self._refresh(args)

    @hookimpl(tryfirst=True)
    def treadle_on_step_end(self, state: Any, control: Any) -> None:
        step = state.global_step
        if step == 1 and self._log_first:
            control.should_log = True
        if self._logging == "steps" and state.logging_steps > 0 and step % state.logging_steps == 0:
            control.should_log = True
        if self._eval == "steps" and state.eval_steps > 0 and step % state.eval_steps == 0 and self._eval_delay <= step:
            control.should_evaluate = True
        if self._save == "steps" and state.save_steps > 0 and step % state.save_steps == 0:
            control.should_save = True
        if step >= state.max_steps:
            control.should_training_stop = True
            if self._eval == "steps" and self._eval_delay <= step:  # the last weights are evaluated too
                control.should_evaluate = True
            if self._save == "steps":
                control.should_save = True

    @hookimpl(tryfirst=True)
    def treadle_on_epoch_end(self, state: Any, control: Any) -> None:
        if self._logging == "epoch":
            control.should_log = True
        if self._eval == "epoch" and self._eval_delay <= (state.epoch or 0):
            control.should_evaluate = True
        if self._save == "epoch":
            control.should_save = True

    @hookimpl(tryfirst=True)
    def treadle_on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any]) -> None:
        if self._save != "best":
            return
        value = metric_to_compare(args, metrics)
        if value is not None and is_improvement(args, value, state.best_metric):
            control.should_save = True
