"""Calling a run's lifecycle hooks with as little overhead per call as possible.

A pluggy hook call costs several microseconds even with one implementation, and the loop makes
a few per optimizer step; against a small model's step of a few hundred microseconds that is
the whole overhead budget. ``EventDispatcher`` therefore snapshots, per event, the
implementations registered with the run's ``RunHooks`` (in pluggy's calling order: ``tryfirst``
first, then the most recently registered) and calls them directly: ``callers[event]`` is None
for an event nobody implements, so such an event costs one dict lookup. For the others it
writes (once per snapshot) one small function that calls each implementation with exactly the
arguments it names, positionally: no dict of the event's values is built and no argument is
looked up by name at call time. Events with a wrapper implementation go through pluggy
itself, so wrapper semantics are never approximated. ``RunHooks`` tells the dispatcher about
every registration or removal, and the snapshot is taken again at once, into the same
``callers`` dict (the loop may keep a reference to it for a whole epoch).
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
    """``callers[event](trainer, args, state, control, extra)`` for one run's hooks (None: nobody listens)."""

    def __init__(self, run_hooks: RunHooks) -> None:
        self.run_hooks = run_hooks
        self.callers: dict[str, Optional[Callable[..., None]]] = {}
        self.refresh()
        run_hooks.on_change(self.refresh)

    def refresh(self) -> None:
        self.callers.update({event: self._caller(event) for event in LIFECYCLE_EVENTS})

    def _caller(self, event: str) -> Optional[Callable[..., None]]:
        name = hook_name(event)
        impls = self.run_hooks.impls(name)
        if not impls:
            return None
        if any(impl.hookwrapper or getattr(impl, "wrapper", False) for impl in impls):
            return self._through_pluggy(name)
        return _direct_caller(name, list(reversed(impls)))  # pluggy's calling order

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


_FIXED_ARGUMENTS = ("trainer", "args", "state", "control")
"""Every event passes these; an event's other values (``logs``, ``metrics``, ...) come in ``extra``."""


def _direct_caller(hook: str, impls: list[Any]) -> Callable[..., None]:
    """``call(trainer, args, state, control, extra)`` calling ``impls`` in order, each with the
    arguments it names (pluggy checked them against the hook's spec at registration).

    The function is generated, as ``dataclasses`` generates ``__init__``: the per-call cost is
    then one Python frame plus the implementations' own calls. An exception gets a note naming
    the plugin it came from, as pluggy-routed calls get one from ``RunHooks.call``.
    """
    namespace: dict[str, Any] = {"_plugins": [impl.plugin_name for impl in impls], "_hook": hook}
    lines = ["def call(trainer, args, state, control, extra):", "    at = 0", "    try:"]
    for index, impl in enumerate(impls):
        namespace[f"_f{index}"] = impl.function
        arguments = ", ".join(a if a in _FIXED_ARGUMENTS else f"extra[{a!r}]" for a in impl.argnames)
        if index:
            lines.append(f"        at = {index}")
        lines.append(f"        _f{index}({arguments})")
    lines += [
        "    except Exception as exc:",
        "        if hasattr(exc, 'add_note'):",
        "            exc.add_note(f'treadle: raised in {_hook} of plugin {_plugins[at]}')",
        "        raise",
    ]
    code = compile("\n".join(lines), f"<treadle: {hook} caller>", "exec")  # the name tracebacks show
    exec(code, namespace)  # noqa: S102 (the source is built above from hook argument names only)
    return namespace["call"]
