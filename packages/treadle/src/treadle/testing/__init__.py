"""treadle's test kit for plugin authors: a pytest plugin with fixtures and conformance classes.

Installed with treadle and registered under pytest's ``pytest11`` entry point as
``treadle.testing``. Loading it costs nothing: this module imports neither torch nor any plugin,
its fixtures are all named ``treadle_*`` (no clash with a project's own), and nothing runs until
a test asks for a fixture or subclasses a conformance class. Where plugin autoloading is off
(``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``), opt in with ``-p treadle.testing`` or, in a conftest,
``pytest_plugins = ["treadle.testing"]``.

Fixtures:
  ``treadle_plugins``        an isolated plugin manager: ``treadle_plugins.load("myplugin")``
  ``treadle_cli``            runs the ``treadle`` command in a subprocess (can hide modules)
  ``treadle_hook_recorder``  a callback that records every lifecycle hook a run calls
  ``treadle_tiny_task``      a task function ``(args) -> TaskParts``: a small model, 64 samples
  ``treadle_tiny_args``      ``TrainingArguments`` for a few quick steps of that task

Conformance classes (``from treadle.testing import ReporterConformance``, ...): see
``treadle.testing.conformance``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from treadle.testing.cli import CliResult, run_treadle
from treadle.testing.isolation import IsolatedPlugins

if TYPE_CHECKING:
    from treadle.testing.recorder import HookRecorder

_CONFORMANCE = (
    "BackendConformance", "PrecisionConformance", "StrategyConformance", "OptimizerConformance",
    "SchedulerConformance", "ReporterConformance", "HubConformance", "TaskConformance", "SearchConformance",
)

__all__ = ["CliResult", "HookRecorder", "IsolatedPlugins", "run_treadle", "tiny_args", *_CONFORMANCE]


def __getattr__(name: str) -> Any:
    """The conformance classes and the recorder load on first use (they are not needed to collect)."""
    if name in _CONFORMANCE:
        from treadle.testing import conformance

        return getattr(conformance, name)
    if name == "HookRecorder":
        from treadle.testing.recorder import HookRecorder

        return HookRecorder
    if name == "tiny_args":
        from treadle.testing.tiny import tiny_args

        return tiny_args
    raise AttributeError(f"module 'treadle.testing' has no attribute {name!r}")


@pytest.fixture
def treadle_plugins(monkeypatch: pytest.MonkeyPatch) -> IsolatedPlugins:
    """A plugin manager of its own for the test, installed as treadle's process-wide manager.

    Starts with the builtins only; ``load("name", ...)`` loads those installed entry points (as
    ``TREADLE_PLUGINS`` would), ``register(module, "name")`` adds a hooks module that is not
    installed. The previous manager and the ``TREADLE_*`` variables come back afterwards.
    """
    isolated = IsolatedPlugins(monkeypatch)
    yield isolated
    isolated.close()


@pytest.fixture
def treadle_cli(tmp_path: Any) -> Any:
    """``treadle_cli("train", "--max_steps", "2", hide=("wandb",))`` -> ``CliResult``.

    Runs ``python -m treadle`` in a subprocess in ``tmp_path``; ``hide`` makes modules
    unimportable in that process (a missing dependency, without uninstalling it).
    """

    def run(*argv: Any, env: dict | None = None, hide: tuple = (), timeout: float = 300, cwd: Any = None) -> CliResult:
        return run_treadle(*argv, env=env, hide=hide, timeout=timeout, cwd=cwd or tmp_path)

    return run


@pytest.fixture
def treadle_hook_recorder() -> HookRecorder:
    """Pass it as a callback (``Trainer(..., callbacks=[treadle_hook_recorder])``); read ``.calls``."""
    from treadle.testing.recorder import HookRecorder

    return HookRecorder()


@pytest.fixture
def treadle_tiny_task() -> Any:
    """The task function of ``treadle.testing.tiny:build`` (also usable as ``--task treadle.testing.tiny:build``)."""
    from treadle.testing.tiny import build

    return build


@pytest.fixture
def treadle_tiny_args(tmp_path: Any) -> Any:
    """``TrainingArguments`` for 4 steps of the tiny task in ``tmp_path/out``; call it with overrides."""
    from treadle.testing.tiny import tiny_args

    def make(**overrides: Any) -> Any:
        return tiny_args(tmp_path / "out", **overrides)

    return make
