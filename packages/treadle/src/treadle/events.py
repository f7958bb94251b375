"""Calling a run's lifecycle hooks with as little overhead per call as possible.

A pluggy hook call costs several microseconds even with one implementation, and the loop makes
a few per optimizer step; against a small model's step of a few hundred microseconds that is
the whole overhead budget. ``EventDispatcher`` therefore snapshots, per event, the
implementations registered with the run's ``RunHooks`` (in pluggy's calling order: ``tryfirst``
first, then the most recently registered) and calls them directly. An event nobody implements
costs one dict lookup. Events with a wrapper implementation go through pluggy itself, so
wrapper semantics are never approximated. A registration or removal through ``RunHooks``
bumps its ``version``; the next dispatch sees that and takes a new snapshot.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from treadle import hookspecs
from treadle.plugins import RunHooks

LIFECYCLE_PREFIX = "treadle_on_"

LIFECYCLE_EVENTS = tuple(
    name[len(LIFECYCLE_PREFIX):] for name in vars(hookspecs) if name.startswith(LIFECYCLE_PREFIX)
)
"""Every lifecycle event, in hookspecs order: the hook specs named ``treadle_on_<event>`` (the one list)."""


def hook_name(event: str) -> str:
    return f"{LIFECYCLE_PREFIX}{event}"


class EventDispatcher:
    """``dispatch(event, trainer, args, state, control, **extra)`` for one run's hooks."""

    def __init__(self, run_hooks: RunHooks) -> None:
        self.run_hooks = run_hooks
        self._callers: dict[str, Optional[Callable[..., None]]] = {}
        self.refresh()

    def refresh(self) -> None:
        self._version = self.run_hooks.version
        self._callers = {event: self._caller(event) for event in LIFECYCLE_EVENTS}

    def dispatch(self, event: str, trainer: Any, args: Any, state: Any, control: Any, **extra: Any) -> None:
        if self._version != self.run_hooks.version:
            self.refresh()
        caller = self._callers[event]
        if caller is not None:
            caller(trainer, args, state, control, extra)

    def _caller(self, event: str) -> Optional[Callable[..., None]]:
        name = hook_name(event)
        impls = self.run_hooks.impls(name)
        if not impls:
            return None
        if any(impl.hookwrapper or getattr(impl, "wrapper", False) for impl in impls):
            return self._through_pluggy(name)
        plan = [(impl.function, tuple(impl.argnames), impl.plugin_name) for impl in reversed(impls)]  # pluggy's order

        def call(trainer: Any, args: Any, state: Any, control: Any, extra: dict[str, Any]) -> None:
            values = {"trainer": trainer, "args": args, "state": state, "control": control}
            if extra:
                values.update(extra)
            for function, argnames, plugin in plan:
                try:
                    function(*[values[n] for n in argnames])
                except Exception as exc:
                    if hasattr(exc, "add_note"):
                        exc.add_note(f"treadle: raised in {name} of plugin {plugin}")
                    raise

        return call

    def _through_pluggy(self, name: str) -> Callable[..., None]:
        def call(trainer: Any, args: Any, state: Any, control: Any, extra: dict[str, Any]) -> None:
            self.run_hooks.call(name, trainer=trainer, args=args, state=state, control=control, **extra)

        return call

