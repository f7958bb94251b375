"""The plugin manager: discovery, isolation, registries of named components, resolution.

Discovery goes through the ``treadle`` entry-point group. Each entry point names a light hooks
module; loading it must not import torch or a vendor library. A module that fails to import or
to register is recorded as *broken* and left out, so one bad plugin never stops the others
(``TREADLE_STRICT_PLUGINS=1`` turns that into a hard error for plugin development).

The core's builtins are registered first, under the name ``treadle``, through exactly the same
hooks a third party implements.

Environment:
  ``TREADLE_DISABLE_PLUGIN_AUTOLOAD=1``  load no entry point (builtins only).
  ``TREADLE_PLUGINS=a,b``                load only these entry points (or distributions).
  ``TREADLE_BLOCKED_PLUGINS=a,b``        never load these.
  ``TREADLE_STRICT_PLUGINS=1``           a broken plugin or a duplicate name raises.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from typing import Any, Callable, Optional

import pluggy

from treadle import hookspecs
from treadle.__about__ import __version__
from treadle.catalog import get_catalog, reset_catalog
from treadle.errors import PluginError
from treadle.registry import (  # noqa: F401  (re-exported: the public names of the plugin API)
    ArgumentSchema,
    ComponentSpec,
    PluginField,
    PluginRecord,
    Register,
    _attribute,
    import_target,
    import_user_target,
)

ENTRY_POINT_GROUP = "treadle"
BUILTIN_PLUGIN_NAME = "treadle"

COMPONENT_KINDS: dict[str, str] = {
    "backend": "treadle_register_backends",
    "precision": "treadle_register_precisions",
    "strategy": "treadle_register_strategies",
    "optimizer": "treadle_register_optimizers",
    "scheduler": "treadle_register_schedulers",
    "reporter": "treadle_register_reporters",
    "hub": "treadle_register_hubs",
    "task": "treadle_register_tasks",
    "kernel": "treadle_register_kernels",
    "search": "treadle_register_search_backends",
}
"""Each component kind and the registration hook that fills its registry."""

KIND_PLURALS: dict[str, str] = {
    "backend": "backends",
    "precision": "precisions",
    "strategy": "strategies",
    "optimizer": "optimizers",
    "scheduler": "schedulers",
    "reporter": "reporters",
    "hub": "hubs",
    "task": "tasks",
    "kernel": "kernels",
    "search": "search backends",
}
"""How messages name several components of a kind."""

SELECTOR_OPTION: dict[str, str] = {
    "backend": "--backend",
    "precision": "--precision",
    "strategy": "--strategy",
    "optimizer": "--optim",
    "scheduler": "--lr_scheduler_type",
    "reporter": "--report_to",
    "hub": "--push_to_hub",
    "task": "--task",
    "kernel": "kernel",
    "search": "--search_backend",
}
"""The argument that selects a component of each kind (used in error messages)."""



def _env_list(name: str) -> Optional[set[str]]:
    value = os.environ.get(name)
    if value is None:
        return None
    return {item.strip() for item in value.split(",") if item.strip()}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


# ---------------------------------------------------------------------------------------------
# Per-run hook caller
# ---------------------------------------------------------------------------------------------


class RunHooks:
    """The hook caller of one run: core flow plugin, selected components, user callbacks.

    Each run gets its own pluggy manager so a run's reporters and callbacks never leak into
    another run. A lifecycle hook that raises is re-raised with a note naming the plugin.
    """

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self._pm.add_hookspecs(hookspecs)
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every registration or removal (to refresh a snapshot at once)."""
        self._listeners.append(listener)

    def register(self, plugin: object, name: Optional[str] = None) -> None:
        self._pm.register(plugin, name=name)
        _check_known_hooks(self._pm, plugin)
        self._changed()

    def unregister(self, plugin: object) -> None:
        self._pm.unregister(plugin)
        self._changed()

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def plugins(self) -> list[object]:
        return list(self._pm.get_plugins())

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        caller = getattr(self._pm.hook, hook_name)
        try:
            return caller(**kwargs)
        except Exception as exc:
            culprit = _culprit(caller.get_hookimpls(), exc)
            if culprit is not None and hasattr(exc, "add_note"):
                exc.add_note(f"treadle: raised in {hook_name} of plugin {culprit}")
            raise

    def impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        return getattr(self._pm.hook, hook_name).get_hookimpls()

    def name_of(self, plugin: object) -> Optional[str]:
        """The name ``plugin`` is registered under (its key in a checkpoint's plugin states)."""
        return self._pm.get_name(plugin)


def _culprit(impls: list[pluggy.HookImpl], exc: BaseException) -> Optional[str]:
    codes = {impl.function.__code__: impl.plugin_name for impl in impls if hasattr(impl.function, "__code__")}
    tb = exc.__traceback__
    found = None
    while tb is not None:
        found = codes.get(tb.tb_frame.f_code, found)
        tb = tb.tb_next
    return found


def _check_known_hooks(pm: pluggy.PluginManager, plugin: object) -> None:
    """Reject a ``treadle_*`` implementation with no matching spec (a misspelt hook name)."""
    callers = pm.get_hookcallers(plugin) or []
    for caller in callers:
        if caller.spec is None:
            optional = any(impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is plugin)
            if optional:
                continue
            known = [name for name in dir(hookspecs) if name.startswith("treadle_")]
            close = difflib.get_close_matches(caller.name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            pm.unregister(plugin)
            raise pluggy.PluginValidationError(plugin, f"unknown hook {caller.name}{hint}")


# ---------------------------------------------------------------------------------------------
# The process-wide manager
# ---------------------------------------------------------------------------------------------


class TreadlePluginManager:
    """Installed plugins and the registries built from their registration hooks."""

    def __init__(self, *, autoload: Optional[bool] = None) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.strict = _env_flag("TREADLE_STRICT_PLUGINS")
        self._registries: dict[str, dict[str, ComponentSpec]] = {}
        self._aliases: dict[str, dict[str, str]] = {}
        self._fields: Optional[dict[str, PluginField]] = None
        self._register_builtin()
        if autoload is None:
            autoload = not _env_flag("TREADLE_DISABLE_PLUGIN_AUTOLOAD")
        if autoload:
            self.load_entry_points()

    # loading ---------------------------------------------------------------------------------
    def _register_builtin(self) -> None:
        from treadle.builtin import hooks as builtin_hooks

        record = PluginRecord(BUILTIN_PLUGIN_NAME, "treadle", __version__, builtin_hooks.__name__)
        self.records[record.name] = record
        self.pm.register(builtin_hooks, name=record.name)

    def register_module(self, module: object, name: str, distribution: str = "", version: str = "") -> PluginRecord:
        """Register a hooks object directly (tests, or code that embeds a plugin)."""
        record = PluginRecord(name, distribution or name, version or "0", getattr(module, "__name__", repr(module)))
        self._add(record, lambda: module)
        return record

    def load_entry_points(self) -> None:
        allowed = _env_list("TREADLE_PLUGINS")
        blocked = _env_list("TREADLE_BLOCKED_PLUGINS") or set()
        seen: set[str] = set()
        known, entry_names = {BUILTIN_PLUGIN_NAME}, set()
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else ep.name
            known |= {ep.name, dist}
            entry_names.add(ep.name)
            if ep.name in seen or ep.name in self.records:
                continue
            seen.add(ep.name)
            if allowed is not None and not ({ep.name, dist} & allowed):
                continue
            version = ep.dist.version if ep.dist is not None else "?"
            if {ep.name, dist} & blocked:  # listed, never imported: `treadle plugins` says why it is missing
                self.records[ep.name] = PluginRecord(
                    ep.name, dist, version, ep.value, status="blocked", error="named in TREADLE_BLOCKED_PLUGINS; not loaded"
                )
                continue
            self._add(PluginRecord(ep.name, dist, version, ep.value), ep.load)
        for variable, names in (("TREADLE_PLUGINS", allowed or set()), ("TREADLE_BLOCKED_PLUGINS", blocked)):
            unknown = sorted(names - known)
            if unknown:  # a typo would otherwise load nothing (or block nothing) without a word
                print(
                    f"treadle: warning: {variable} names {', '.join(unknown)}, which no installed plugin is "
                    f"(installed: {', '.join(sorted(entry_names)) or 'none'})",
                    file=sys.stderr,
                )

    def _add(self, record: PluginRecord, load: Callable[[], object]) -> None:
        self.records[record.name] = record
        try:
            module = load()
            self.pm.register(module, name=record.name)
            _check_known_hooks(self.pm, module)
        except Exception as exc:
            self._mark_broken(record, f"{type(exc).__name__}: {exc}", exc)
            return
        record.hooks = sorted({c.name for c in self.pm.get_hookcallers(module) or []})
        self._invalidate()

    def _mark_broken(self, record: PluginRecord, reason: str, exc: Optional[BaseException] = None) -> None:
        record.status = "broken"
        record.error = reason
        plugin = self.pm.get_plugin(record.name)
        if plugin is not None:
            self.pm.unregister(plugin)
        if self.strict:
            raise PluginError(f"plugin {record.name} ({record.label}) is broken: {reason}") from exc
        print(f"treadle: warning: plugin {record.name} ({record.label}) is broken and was skipped: {reason}", file=sys.stderr)
        self._invalidate()

    def _invalidate(self) -> None:
        self._registries.clear()
        self._aliases.clear()
        self._fields = None

    # registries ------------------------------------------------------------------------------
    def registry(self, kind: str) -> dict[str, ComponentSpec]:
        """Name -> spec for one kind, built on first use by calling each plugin's hook."""
        if kind not in self._registries:
            self._build_registry(kind)
        return self._registries[kind]

    def _build_registry(self, kind: str) -> None:
        registry: dict[str, ComponentSpec] = {}
        aliases: dict[str, str] = {}
        for impl in getattr(self.pm.hook, COMPONENT_KINDS[kind]).get_hookimpls():
            record = self.records[impl.plugin_name]
            if record.status != "ok":
                continue
            register = Register(kind, record)
            try:
                impl.function(register=register)
                for spec, override in register.entries:
                    self._claim(registry, aliases, spec, override)
            except Exception as exc:
                self._mark_broken(record, f"{type(exc).__name__}: {exc}", exc)
                return self._build_registry(kind)  # start again without the broken plugin
            for spec, _ in register.entries:
                record.provides.setdefault(kind, [])
                if spec.name not in record.provides[kind]:
                    record.provides[kind].append(spec.name)
        self._registries[kind] = dict(sorted(registry.items(), key=lambda kv: (-kv[1].priority, kv[0])))
        self._aliases[kind] = aliases

    def _claim(self, registry: dict[str, ComponentSpec], aliases: dict[str, str], spec: ComponentSpec, override: bool) -> None:
        holder = registry.get(spec.name) or registry.get(aliases.get(spec.name, ""))
        if holder is not None and holder.plugin is not spec.plugin:
            if not override:
                raise PluginError(
                    f"{spec.kind} '{spec.name}' is claimed by both {holder.plugin.label} and "
                    f"{spec.plugin.label}; uninstall one, or register with override=True to replace it"
                )
            if holder.plugin.name == BUILTIN_PLUGIN_NAME:
                warnings.warn(
                    f"{spec.plugin.label} replaces treadle's builtin {spec.kind} '{spec.name}'",
                    stacklevel=2,
                )
            registry.pop(holder.name, None)
        registry[spec.name] = spec
        for alias in spec.aliases:
            aliases[alias] = spec.name

    def names(self, kind: str) -> list[str]:
        return list(self.registry(kind))

    def resolve(self, kind: str, name: str, args: Any = None) -> ComponentSpec:
        """Find the spec for ``name`` or raise a ``PluginError`` listing what is installed."""
        registry = self.registry(kind)
        canonical = self._aliases.get(kind, {}).get(name, name)
        if canonical in registry:
            return registry[canonical]
        spec = self.pm.hook.treadle_resolve_component(kind=kind, name=name, args=args)
        if spec is not None:
            return spec
        raise PluginError(self.missing_message(kind, name))

    def missing_message(self, kind: str, name: str) -> str:
        option = SELECTOR_OPTION.get(kind, kind)
        installed = ", ".join(self.names(kind)) or "none"
        lines = [f"{option} {name}: no installed plugin provides {kind} '{name}'.", f"installed {KIND_PLURALS.get(kind, kind)}: {installed}."]
        distribution = get_catalog().distribution_for(kind, name)
        broken = [r for r in self.records.values() if r.status == "broken"]
        if distribution:
            from treadle.install_hints import install_command

            lines.append(f"To add it: {install_command(distribution)}")
        else:
            close = difflib.get_close_matches(name, list(self.registry(kind)) + list(self._aliases.get(kind, {})), n=1)
            if close:
                lines.append(f"Did you mean '{close[0]}'?")
        if broken:
            lines.append("Broken plugins (see `treadle plugins`): " + ", ".join(r.name for r in broken))
        return "\n".join(lines)

    def select_default(self, kind: str, args: Any) -> str:
        """The name ``auto`` stands for (``treadle_select_default``)."""
        candidates = list(self.registry(kind).values())
        choice = self.pm.hook.treadle_select_default(kind=kind, args=args, candidates=candidates)
        if choice is None:
            raise PluginError(f"{SELECTOR_OPTION.get(kind, kind)} auto: no installed {kind} is available on this machine")
        return choice

    # plugin argument fields --------------------------------------------------------------------
    def argument_fields(self) -> dict[str, PluginField]:
        """Every field added by ``treadle_add_arguments``, by name."""
        if self._fields is None:
            from treadle.args import TrainingArguments
            import dataclasses

            core = {f.name for f in dataclasses.fields(TrainingArguments)}
            fields: dict[str, PluginField] = {}
            for impl in self.pm.hook.treadle_add_arguments.get_hookimpls():
                record = self.records[impl.plugin_name]
                schema = ArgumentSchema(record, record.name.replace("-", "_"), fields, core)
                try:
                    impl.function(schema=schema)
                except Exception as exc:
                    self._mark_broken(record, f"{type(exc).__name__}: {exc}", exc)
                    return self.argument_fields()
                for f in schema.added:
                    fields[f.name] = f
                record.arguments = [f.name for f in schema.added]
            self._fields = fields
        return self._fields

    def argument_aliases(self) -> dict[str, str]:
        """Alias -> the plugin field it spells (``schema.add(..., aliases=...)``)."""
        return {alias: f.name for f in self.argument_fields().values() for alias in f.aliases}

    # hooks for the configuration family ----------------------------------------------------------
    def adjust_and_validate(self, args: Any, explicit: frozenset[str]) -> list[str]:
        """Run every plugin's adjust hook, then collect every validation message."""
        self.pm.hook.treadle_adjust_arguments(args=args, explicit=explicit)
        messages: list[str] = []
        for result in self.pm.hook.treadle_validate_arguments(args=args):
            messages.extend(result or [])
        return messages

    def report_env(self) -> list[tuple[str, str, str]]:
        """``(plugin, label, value)`` lines for ``treadle env``; a failing plugin reports its error."""
        lines = []
        for impl in self.pm.hook.treadle_report_env.get_hookimpls():
            try:
                for label, value in impl.function() or []:
                    lines.append((impl.plugin_name, label, str(value)))
            except Exception as exc:
                lines.append((impl.plugin_name, "error", f"{type(exc).__name__}: {exc}"))
        return lines

    def collect_all(self) -> list[PluginRecord]:
        """Build every registry and the argument fields, then list the plugins."""
        for kind in COMPONENT_KINDS:
            self.registry(kind)
        self.argument_fields()
        return list(self.records.values())


_MANAGER: Optional[TreadlePluginManager] = None


def get_plugin_manager() -> TreadlePluginManager:
    """The process-wide manager (created, and entry points loaded, on first use)."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = TreadlePluginManager()
    return _MANAGER


def reset_plugin_manager(manager: Optional[TreadlePluginManager] = None) -> None:
    """Replace (or forget) the process-wide manager; for tests and embedding applications."""
    global _MANAGER
    _MANAGER = manager
    reset_catalog()  # it holds rows the old manager's plugins added
