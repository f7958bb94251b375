"""Calling a run's lifecycle hooks with as little overhead per call as possible.

A pluggy hook call costs several microseconds even with one implementation, and the loop makes
a few per optimizer step; against a small model's step of a few hundred microseconds that is
the whole overhead budget. ``EventDispatcher`` therefore snapshots, per event, the
implementations registered with the run's ``RunHooks`` (in pluggy's calling order: ``tryfirst``
first, then the most recently registered) and calls them directly: ``callers[event]`` is None
for an event nobody implements, so such an event costs one dict lookup. Each implementation's
arguments are picked from the event's values by an ``operator.itemgetter`` built once, not by a
Python loop per call. Events with a wrapper implementation go through pluggy itself, so
wrapper semantics are never approximated. ``RunHooks`` tells the dispatcher about every
registration or removal, and the snapshot is taken again at once.
"""

from __future__ import annotations

import operator
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
    """``callers[event](trainer, args, state, control, extra)`` for one run's hooks (None: nobody listens)."""

    def __init__(self, run_hooks: RunHooks) -> None:
        self.run_hooks = run_hooks
        self.callers: dict[str, Optional[Callable[..., None]]] = {}
        self.refresh()
        run_hooks.on_change(self.refresh)

    def refresh(self) -> None:
        self.callers = {event: self._caller(event) for event in LIFECYCLE_EVENTS}

    def _caller(self, event: str) -> Optional[Callable[..., None]]:
        name = hook_name(event)
        impls = self.run_hooks.impls(name)
        if not impls:
            return None
        if any(impl.hookwrapper or getattr(impl, "wrapper", False) for impl in impls):
            return self._through_pluggy(name)
        plan = [(impl.function, *_picker(impl.argnames), impl.plugin_name) for impl in reversed(impls)]  # pluggy's order

        def call(trainer: Any, args: Any, state: Any, control: Any, extra: dict[str, Any]) -> None:
            values = {"trainer": trainer, "args": args, "state": state, "control": control, **extra}
            for function, pick, count, plugin in plan:
                try:
                    if count == 1:
                        function(pick(values))
                    elif count:
                        function(*pick(values))
                    else:
                        function()
                except Exception as exc:
                    if hasattr(exc, "add_note"):
                        exc.add_note(f"treadle: raised in {name} of plugin {plugin}")
                    raise

        return call

    def call_each(
        self, event: str, trainer: Any, args: Any, state: Any, control: Any, extra: dict[str, Any],
        on_error: Callable[[str, str, BaseException], None],
    ) -> None:
        """Call every implementation of ``event`` even if one raises (``on_error(event, plugin, exc)``).

        For the closing events (``run_end``, ``exception``): each reporter must get the chance
        to close its run whatever another one did.
        """
        name = hook_name(event)
        impls = self.run_hooks.impls(name)
        values = {"trainer": trainer, "args": args, "state": state, "control": control, **extra}
        for impl in reversed(impls):  # pluggy's calling order
            if impl.hookwrapper or getattr(impl, "wrapper", False):
                continue  # a wrapper has nothing to wrap here: each call stands alone
            try:
                impl.function(*(values[arg] for arg in impl.argnames))
            except Exception as exc:
                on_error(event, impl.plugin_name, exc)

    def _through_pluggy(self, name: str) -> Callable[..., None]:
        def call(trainer: Any, args: Any, state: Any, control: Any, extra: dict[str, Any]) -> None:
            self.run_hooks.call(name, trainer=trainer, args=args, state=state, control=control, **extra)

        return call


def _picker(argnames: tuple[str, ...]) -> tuple[Optional[Callable[[dict[str, Any]], Any]], int]:
    """``(getter, count)``: ``getter(values)`` is the one argument (count 1) or the tuple of them."""
    return (operator.itemgetter(*argnames) if argnames else None), len(argnames)
