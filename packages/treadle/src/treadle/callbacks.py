"""User callbacks: how callback objects become hook implementations of a run.

Two shapes are accepted, and both end up registered with the run's ``RunHooks``:

* an object with ``treadle_on_*`` methods marked ``@hookimpl`` is registered as it is;
* an object shaped like transformers' ``TrainerCallback`` (``on_train_begin(args, state,
  control, **kwargs)`` ...) is wrapped by ``TrainerCallbackAdapter``, which implements only the
  hooks the object really overrides, so events nobody listens to cost nothing.

A TrainerCallback may return a control object; its flags are copied into the run's control.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from treadle.errors import UsageError
from treadle.events import LIFECYCLE_EVENTS
from treadle.flow import best_metric_key, is_improvement, metric_to_compare, option_value
from treadle.markers import hookimpl
from treadle.state import ExportableState

_EVENT_EXTRA = {
    "evaluate": "metrics", "predict": "metrics", "log": "logs", "save": "checkpoint_dir", "push_begin": "checkpoint_dir",
    "exception": "exception", "model_saved": "output_dir",
}


class TrainerCallback:
    """A base class with a no-op method per event, for callbacks written in the transformers style.

    Subclass it and override the events you need; the adapter skips the ones you did not
    override. Each method receives ``args, state, control`` and keyword arguments ``model``,
    ``processing_class``, ``optimizer``, ``lr_scheduler``, ``train_dataloader``,
    ``eval_dataloader`` (plus ``metrics`` or ``logs`` where the event has them).
    An ``on_<event>`` no-op exists for each lifecycle event of ``treadle.hookspecs``.
    """


def _no_op(event: str) -> Callable[..., None]:
    def on_event(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Does nothing; override it to act on this event."""

    on_event.__name__ = f"on_{event}"
    on_event.__qualname__ = f"TrainerCallback.on_{event}"
    return on_event


for _event in LIFECYCLE_EVENTS:
    setattr(TrainerCallback, f"on_{_event}", _no_op(_event))
del _event


def _overridden_events(callback: object) -> list[str]:
    """Events the callback implements itself (methods inherited from a base TrainerCallback are no-ops)."""
    events = []
    for event in LIFECYCLE_EVENTS:
        method = getattr(callback, f"on_{event}", None)
        if not callable(method):
            continue
        owner = next((k for k in type(callback).__mro__ if f"on_{event}" in vars(k)), None)
        if owner is not None and owner.__name__ == "TrainerCallback":
            continue  # the no-op default of ours or of transformers
        events.append(event)
    return events


def _callback_kwargs(trainer: Any) -> dict[str, Any]:
    return {
        "model": getattr(trainer, "model", None),
        "processing_class": getattr(trainer, "processing_class", None),
        "tokenizer": getattr(trainer, "processing_class", None),
        "optimizer": getattr(trainer, "optimizer", None),
        "lr_scheduler": getattr(trainer, "lr_scheduler", None),
        "train_dataloader": getattr(trainer, "train_dataloader", None),
        "eval_dataloader": getattr(trainer, "eval_dataloader", None),
    }


class TrainerCallbackAdapter:
    """Presents a TrainerCallback-shaped object as ``treadle_on_*`` hook implementations."""

    def __init__(self, callback: object) -> None:
        self.callback = callback
        events = _overridden_events(callback)
        if not events:
            raise UsageError(
                f"callback {type(callback).__name__} implements no event: define on_<event> methods "
                f"(on_step_end, on_log, ...) or treadle_on_<event> hook implementations"
            )
        for event in events:
            setattr(self, f"treadle_on_{event}", self._make_impl(event, getattr(callback, f"on_{event}")))

    @staticmethod
    def _make_impl(event: str, method: Callable[..., Any]) -> Callable[..., None]:
        # pluggy passes hook arguments by name, so each event gets a function with the exact
        # signature of its hook spec.
        def call(trainer: Any, args: Any, state: Any, control: Any, extra: dict[str, Any]) -> None:
            result = method(args, state, control, **_callback_kwargs(trainer), **extra)
            if result is not None and result is not control:
                control.update_from(result)

        extra_name = _EVENT_EXTRA.get(event)
        if extra_name == "metrics":

            def impl(trainer, args, state, control, metrics):
                call(trainer, args, state, control, {"metrics": metrics})

        elif extra_name == "logs":

            def impl(trainer, args, state, control, logs):
                call(trainer, args, state, control, {"logs": logs})

        elif extra_name == "checkpoint_dir":

            def impl(trainer, args, state, control, checkpoint_dir):
                call(trainer, args, state, control, {"checkpoint_dir": checkpoint_dir})

        elif extra_name == "output_dir":

            def impl(trainer, args, state, control, output_dir):
                call(trainer, args, state, control, {"output_dir": output_dir})

        elif extra_name == "exception":

            def impl(trainer, args, state, control, exception):
                call(trainer, args, state, control, {"exception": exception})

        else:

            def impl(trainer, args, state, control):
                call(trainer, args, state, control, {})

        impl.__name__ = f"treadle_on_{event}"
        return hookimpl(impl)


def has_hookimpls(obj: object) -> bool:
    return any(
        name.startswith("treadle_") and hasattr(getattr(obj, name, None), "treadle_impl")
        for name in dir(obj)
    )


def as_hook_plugin(callback: object) -> object:
    """The object to register for ``callback``: itself if it has hookimpls, else an adapter."""
    if has_hookimpls(callback):
        return callback
    return TrainerCallbackAdapter(callback)


def plugin_name(callback: object) -> str:
    return f"callback:{type(callback).__name__}:{id(callback):x}"


class EarlyStoppingCallback(ExportableState):
    """Stop training when the evaluation metric stops improving.

    Training stops after ``early_stopping_patience`` evaluations in a row in which
    ``metric_for_best_model`` did not improve on the best value seen by more than
    ``early_stopping_threshold`` (in the direction given by ``greater_is_better``). Needs an
    evaluation strategy other than ``no`` and ``metric_for_best_model``.
    """

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: Optional[float] = 0.0) -> None:
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold or 0.0
        self.early_stopping_patience_counter = 0
        self.best_metric: Optional[float] = None

    @hookimpl
    def treadle_on_train_begin(self, args: Any) -> None:
        problems = []
        if not args.metric_for_best_model:
            problems.append("set --metric_for_best_model (the metric to watch, e.g. loss or accuracy)")
        if option_value(args.eval_strategy) == "no":
            problems.append("set --eval_strategy steps or epoch (it only acts after evaluations)")
        if problems:
            raise UsageError("EarlyStoppingCallback cannot work: " + "; ".join(problems))

    @hookimpl
    def treadle_on_evaluate(self, args: Any, control: Any, metrics: dict[str, float]) -> None:
        value = metric_to_compare(args, metrics)
        if value is None:
            return  # e.g. a second eval set that does not carry the watched metric
        if is_improvement(args, value, self.best_metric, self.early_stopping_threshold):
            self.best_metric = value
            self.early_stopping_patience_counter = 0
        else:
            self.early_stopping_patience_counter += 1
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            control.should_training_stop = True

    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "early_stopping_patience": self.early_stopping_patience,
                "early_stopping_threshold": self.early_stopping_threshold,
            },
            "attributes": {
                "early_stopping_patience_counter": self.early_stopping_patience_counter,
                "best_metric": self.best_metric,
            },
        }


__all__ = [
    "LIFECYCLE_EVENTS",
    "TrainerCallback",
    "TrainerCallbackAdapter",
    "EarlyStoppingCallback",
    "as_hook_plugin",
    "best_metric_key",
]
