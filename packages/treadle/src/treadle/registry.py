"""The registry types: what a plugin is, what it registers, and how a target is imported.

A leaf module (standard library only, besides ``treadle.errors``): the plugin manager, the
hook specifications (for their annotations) and the builtins all use these types without
importing each other. Plugin authors may import them for type checking:
``from treadle.registry import ComponentSpec, Register, ArgumentSchema``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from treadle.errors import PluginError

__all__ = ["ArgumentSchema", "ComponentSpec", "PluginField", "PluginRecord", "Register", "import_target", "import_user_target"]


def import_target(target: str) -> Any:
    """Import ``"package.module:attr.path"`` and return the attribute."""
    module_name, _, attr_path = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    return _attribute(obj, attr_path)


def _attribute(obj: Any, attr_path: str) -> Any:
    for part in filter(None, attr_path.split(".")):
        obj = getattr(obj, part)
    return obj


def import_user_target(target: str) -> Any:
    """Import a user's ``module:attr`` or ``path/to/file.py:attr`` as ``python -m`` / ``python file.py`` would.

    The ``treadle`` console script, unlike ``python -m treadle``, does not put the current
    directory on ``sys.path``; a ``mymod:build`` next to the user must work under both.
    """
    location, _, attr_path = target.rpartition(":")
    if location.endswith(".py") or "/" in location or os.sep in location:
        return _attribute(_import_file(Path(location)), attr_path)
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    return _attribute(importlib.import_module(location), attr_path)


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path} (relative to {os.getcwd()})")
    path = path.resolve()
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) and Path(existing.__file__).resolve() == path:
        return existing
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:  # its sibling modules import as they would under `python file.py`
        sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


# ---------------------------------------------------------------------------------------------
# What plugins are and what they provide
# ---------------------------------------------------------------------------------------------


@dataclass
class PluginRecord:
    """One plugin as ``treadle plugins`` shows it."""

    name: str
    distribution: str
    version: str
    module: str
    status: str = "ok"  # ok | broken | blocked (TREADLE_BLOCKED_PLUGINS: listed, not loaded)
    error: Optional[str] = None
    provides: dict[str, list[str]] = field(default_factory=dict)
    arguments: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.distribution} {self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "status": self.status,
            "error": self.error,
            "provides": self.provides,
            "arguments": self.arguments,
            "hooks": self.hooks,
        }


@dataclass
class ComponentSpec:
    """A named component: who provides it and where its implementation lives.

    Nothing is imported until ``load()``; ``available()`` checks the ``requires`` modules with
    ``importlib.util.find_spec`` only.
    """

    kind: str
    name: str
    target: str
    plugin: PluginRecord
    description: str = ""
    aliases: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    priority: int = 0
    init: dict[str, Any] = field(default_factory=dict)
    compat: dict[str, tuple[str, ...]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    always: bool = False  # a reporter that joins every run, whatever --report_to says (e.g. console)
    user_code: bool = False  # target given on the command line: imported from the current dir or a .py file

    @property
    def distribution(self) -> str:
        return self.plugin.distribution

    def missing_requirements(self) -> list[str]:
        missing = []
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(module)
        return missing

    def available(self) -> bool:
        return not self.missing_requirements()

    def requirements_problem(self) -> Optional[str]:
        """What is missing for this component to load (modules and the pip hint), or None."""
        missing = self.missing_requirements()
        if not missing:
            return None
        return (
            f"{self.kind} '{self.name}' is provided by {self.plugin.label}, but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not importable; "
            f"install {'it' if len(missing) == 1 else 'them'} (pip install {' '.join(missing)}) and try again."
        )

    def load(self) -> Any:
        """Import and return the implementation, or raise a ``PluginError`` that says why not."""
        problem = self.requirements_problem()
        if problem:
            raise PluginError(problem)
        try:
            return (import_user_target if self.user_code else import_target)(self.target)
        except Exception as exc:  # any import-time failure of the plugin's own module
            raise PluginError(
                f"{self.kind} '{self.name}' from {self.plugin.label} failed to import "
                f"{self.target}: {type(exc).__name__}: {exc}"
            ) from exc

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "distribution": self.distribution,
            "description": self.description,
            "aliases": list(self.aliases),
            "available": self.available(),
        }


class Register:
    """The ``register`` callback a registration hook receives, bound to one plugin and kind."""

    def __init__(self, kind: str, plugin: PluginRecord) -> None:
        self.kind = kind
        self.plugin = plugin
        self.entries: list[tuple[ComponentSpec, bool]] = []

    def __call__(
        self,
        name: str,
        target: str,
        *,
        description: str = "",
        aliases: Iterable[str] = (),
        requires: Iterable[str] = (),
        priority: int = 0,
        init: Optional[dict[str, Any]] = None,
        compat: Optional[dict[str, Iterable[str]]] = None,
        defaults: Optional[dict[str, Any]] = None,
        always: bool = False,
        override: bool = False,
    ) -> None:
        """Offer ``name`` (the value users type) implemented by ``target`` (``"module:attr"``).

        ``requires`` lists modules that must be importable; ``priority`` orders ``auto``
        choices; ``init`` holds keyword presets passed to the implementation; ``compat`` maps
        another kind to the names this one works with; ``defaults`` holds argument values that
        suit this component, applied to arguments the user left unset when it is selected;
        ``always=True`` (reporters) joins every run without being named in ``--report_to`` (it
        decides itself, from the arguments, how much to show); ``override=True`` replaces a name another
        distribution registered (replacing a builtin warns).
        """
        if ":" not in target:
            raise ValueError(f"register({name!r}): target {target!r} must look like 'package.module:attr'")
        spec = ComponentSpec(
            kind=self.kind,
            name=name,
            target=target,
            plugin=self.plugin,
            description=description,
            aliases=tuple(aliases),
            requires=tuple(requires),
            priority=priority,
            init=dict(init or {}),
            compat={k: tuple(v) for k, v in (compat or {}).items()},
            defaults=dict(defaults or {}),
            always=always,
        )
        self.entries.append((spec, override))


@dataclass
class PluginField:
    """An argument field a plugin adds (``treadle_add_arguments``)."""

    name: str
    type: Any
    default: Any
    help: str
    plugin: PluginRecord
    choices: Optional[tuple[Any, ...]] = None
    aliases: tuple[str, ...] = ()


class ArgumentSchema:
    """What ``treadle_add_arguments`` receives: ``schema.add(...)`` declares a field."""

    def __init__(self, plugin: PluginRecord, namespace: str, taken: dict[str, PluginField], core_names: set[str]) -> None:
        self._plugin = plugin
        self._namespace = namespace
        self._taken = taken
        self._core_names = core_names
        self.added: list[PluginField] = []

    def add(
        self, name: str, *, type: Any = str, default: Any = None, help: str = "", choices: Optional[Iterable[Any]] = None,
        aliases: Iterable[str] = (),
    ) -> None:
        """Declare ``--<name>``; ``name`` must start with ``<plugin namespace>_``.

        ``aliases`` are shorter spellings the command line and config files also accept (a task
        plugin's ``--model_name_or_path`` for ``transformers_model_name_or_path``, as the
        familiar example scripts spell it); the value is stored under ``name``. An alias may not
        be a core argument nor another plugin's argument or alias.
        """
        if not name.startswith(self._namespace + "_"):
            raise ValueError(f"argument {name!r} must be namespaced as '{self._namespace}_...'")
        for spelling in (name, *aliases):
            if not spelling.isidentifier():
                raise ValueError(f"argument {spelling!r} is not a valid name (letters, digits, underscores)")
            if spelling in self._core_names:
                raise ValueError(f"argument {spelling!r} is already a core treadle argument")
            owner = self._taken.get(spelling) or next((f for f in self._taken.values() if spelling in f.aliases), None)
            if owner is not None:
                raise ValueError(f"argument {spelling!r} is already declared by {owner.plugin.label}")
        self.added.append(
            PluginField(name, type, default, help, self._plugin, tuple(choices) if choices else None, tuple(aliases))
        )
