"""The plugin authors' kit (``treadle.testing``) applied to the fixture plugins, and its fixtures.

The conformance classes are what a third party runs against its plugin; here they run against
the fixture distributions under tests/fixtures (a reporter, an optimizer, a precision, two
strategies, a backend), and one class is pointed at a broken plugin to show it fails.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from treadle.testing import (
    BackendConformance,
    OptimizerConformance,
    PrecisionConformance,
    ReporterConformance,
    SchedulerConformance,
    StrategyConformance,
    TaskConformance,
)


class TestFixtureReporter(ReporterConformance):
    entry_point = "fixture_good"
    name = "fixture"
    hidden_module = "treadle_fixture_good.reporter"  # it registers no requires=: hide its own module instead

    def read_back(self, output_dir):
        written = {}
        for line in (output_dir / "fixture_logs.jsonl").read_text().splitlines():
            entry = json.loads(line)
            written.setdefault(entry.pop("step"), {}).update({k: v for k, v in entry.items() if k != "tag"})
        return written


class TestFixtureOptimizer(OptimizerConformance):
    entry_point = "fixture_good"
    name = "fixture_sgd"


class TestFixturePrecision(PrecisionConformance):
    entry_point = "fixture_precision"
    name = "fixture-scaling"


class TestFixtureShardedStrategy(StrategyConformance):
    entry_point = "fixture_strategies"
    name = "fixture_sharded"


class TestFixtureBackend(BackendConformance):
    entry_point = "fixture_device"
    name = "counting"


class TestBuiltinScheduler(SchedulerConformance):
    """The builtins live under the entry point 'treadle' (not installed as one): only what does
    not need an entry point is run for them."""

    entry_point = "fixture_good"  # loads a plugin, the scheduler itself is the core's
    name = "cosine"

    def test_entry_point_loads_without_torch(self):
        pytest.skip("a builtin: the core's own registrations are guarded by test_core_names_no_plugin")

    def test_names_are_valid(self):
        pytest.skip("a builtin")


def test_the_entry_point_is_registered_with_pytest():
    from importlib.metadata import entry_points

    (found,) = [ep for ep in entry_points(group="pytest11") if ep.value == "treadle.testing"]
    assert found.name == "treadle.testing"  # same as the module: -p treadle.testing does not register it twice


def test_loading_the_pytest_plugin_imports_no_torch():
    code = "import sys, treadle.testing, treadle.testing.conformance; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_opting_in_twice_is_harmless(tmp_path):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["treadle.testing"]\n')
    (tmp_path / "test_one.py").write_text("def test_it(treadle_tiny_args):\n    assert treadle_tiny_args().max_steps == 4\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "treadle.testing", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_hook_recorder_sees_the_lifecycle(treadle_tiny_args, treadle_tiny_task, treadle_hook_recorder):
    from treadle.run import make_trainer

    args = treadle_tiny_args(eval_strategy="steps", eval_steps=2)
    parts = treadle_tiny_task(args)
    parts.callbacks = [treadle_hook_recorder]
    make_trainer(args, parts).train()
    names = treadle_hook_recorder.names()
    assert names[0] == "init_end" and names[1] == "train_begin" and names[-1] == "train_end"
    assert treadle_hook_recorder.count("step_end") == 4 and treadle_hook_recorder.count("evaluate") == 2
    (evaluation, *_) = treadle_hook_recorder.of("evaluate")
    assert evaluation.step == 2 and "eval_loss" in evaluation.kwargs["metrics"]


def test_isolated_plugins_load_one_entry_point_and_restore(treadle_plugins):
    from treadle.plugins import get_plugin_manager

    manager = treadle_plugins.load("fixture_good")
    assert get_plugin_manager() is manager
    assert set(manager.records) == {"treadle", "fixture_good"}
    assert treadle_plugins.record("fixture_good").provides == {"reporter": ["fixture"], "optimizer": ["fixture_sgd"]}


def test_cli_runner_hides_a_module(treadle_cli):
    result = treadle_cli("train", "--max_steps", "1", "--optim", "adamw_torch", hide=("torch",))
    result.assert_clean_error("torch")


def test_a_broken_plugin_is_refused_by_the_kit(treadle_plugins):
    """The conformance classes load strictly: an entry point that cannot import fails their set-up."""
    from treadle.errors import PluginError

    with pytest.raises(PluginError, match="fixture_broken"):
        treadle_plugins.load("fixture_broken")
