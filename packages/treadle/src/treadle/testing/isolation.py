"""An isolated plugin manager for one test (the ``treadle_plugins`` fixture).

treadle keeps one process-wide plugin manager; a test that installs another must put the old one
back and must not inherit the developer's ``TREADLE_*`` variables, or its result would depend on
which plugins happen to be installed.
"""

from __future__ import annotations

from typing import Any

_VARIABLES = ("TREADLE_PLUGINS", "TREADLE_BLOCKED_PLUGINS", "TREADLE_STRICT_PLUGINS", "TREADLE_DISABLE_PLUGIN_AUTOLOAD")


class IsolatedPlugins:
    """Builds managers that load only the entry points a test names, strictly (a broken plugin raises)."""

    def __init__(self, monkeypatch: Any) -> None:
        from treadle import plugins

        self._monkeypatch = monkeypatch
        self._previous = plugins._MANAGER
        for name in _VARIABLES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", "1")
        self.manager = self._install(None)

    def _install(self, only: tuple[str, ...] | None) -> Any:
        from treadle.plugins import TreadlePluginManager, reset_plugin_manager

        if only is None:
            manager = TreadlePluginManager(autoload=False)
        else:
            self._monkeypatch.setenv("TREADLE_PLUGINS", ",".join(only))
            self._monkeypatch.setenv("TREADLE_STRICT_PLUGINS", "1")
            self._monkeypatch.delenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
            manager = TreadlePluginManager(autoload=True)
        reset_plugin_manager(manager)
        self.manager = manager
        return manager

    def load(self, *entry_points: str) -> Any:
        """A fresh manager with the builtins and these installed entry points (names or distributions)."""
        return self._install(tuple(entry_points))

    def register(self, module: object, name: str, distribution: str = "", version: str = "") -> Any:
        """Add a hooks object that is not installed to the current manager; returns its record."""
        return self.manager.register_module(module, name, distribution, version)

    def record(self, name: str) -> Any:
        """The ``PluginRecord`` of ``name`` after every registry is built (what ``treadle plugins`` shows)."""
        self.manager.collect_all()
        return self.manager.records[name]

    def close(self) -> None:
        from treadle.plugins import reset_plugin_manager

        reset_plugin_manager(self._previous)
