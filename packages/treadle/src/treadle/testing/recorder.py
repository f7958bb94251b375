"""A callback that writes down every lifecycle hook a run calls (the ``treadle_hook_recorder`` fixture).

pluggy passes a hook implementation only the arguments its code object names, so the recorder's
methods are generated from the hook specifications in ``treadle.hookspecs``: each takes exactly
the spec's arguments. A new hook in the core is recorded without a change here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from treadle import hookspecs
from treadle.markers import hookimpl


@dataclass
class HookCall:
    """One call: the hook's name, the step it happened at, and the arguments besides the trainer's objects."""

    name: str
    step: int
    kwargs: dict[str, Any] = field(default_factory=dict)


_SKIPPED = {"trainer", "args", "state", "control"}


def _lifecycle_hooks() -> dict[str, list[str]]:
    return {
        name: list(inspect.signature(getattr(hookspecs, name)).parameters)
        for name in dir(hookspecs)
        if name.startswith("treadle_on_") and callable(getattr(hookspecs, name))
    }


def _recording_method(name: str, params: list[str]) -> Any:
    source = (
        f"def {name}(self, {', '.join(params)}):\n"
        f"    self._record({name!r}, locals())\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<treadle.testing.recorder:{name}>", "exec"), namespace)  # names come from hookspecs only
    return hookimpl(namespace[name])


class HookRecorder:
    """``calls``: every ``HookCall`` in order; ``names()``: the hook names; ``count(name)``."""

    def __init__(self) -> None:
        self.calls: list[HookCall] = []

    def _record(self, name: str, local: dict[str, Any]) -> None:
        state = local.get("state")
        step = int(getattr(state, "global_step", -1)) if state is not None else -1
        kwargs = {k: v for k, v in local.items() if k not in _SKIPPED and k != "self"}
        self.calls.append(HookCall(name[len("treadle_on_"):], step, kwargs))

    def names(self) -> list[str]:
        """Hook names without the ``treadle_on_`` prefix, in call order."""
        return [call.name for call in self.calls]

    def count(self, name: str) -> int:
        return sum(1 for call in self.calls if call.name == name)

    def of(self, name: str) -> list[HookCall]:
        return [call for call in self.calls if call.name == name]


for _name, _params in _lifecycle_hooks().items():
    setattr(HookRecorder, _name, _recording_method(_name, _params))
del _name, _params
