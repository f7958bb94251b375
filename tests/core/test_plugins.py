"""The plugin manager: registries, resolution errors, isolation of broken plugins, strict mode."""

import sys
import warnings

import pluggy
import pytest

from treadle import hookimpl
from treadle.errors import PluginError
from treadle.plugins import RunHooks, TreadlePluginManager


@pytest.fixture
def pm():
    return TreadlePluginManager(autoload=False)


def test_builtins_register_through_the_hooks(pm):
    assert pm.names("backend") == ["cpu"]
    assert "fp32" in pm.names("precision")
    assert "single" in pm.names("strategy")
    assert {"adamw_torch", "sgd", "adafactor"} <= set(pm.names("optimizer"))
    assert {"linear", "cosine", "warmup_stable_decay"} <= set(pm.names("scheduler"))
    assert {"console", "jsonl"} <= set(pm.names("reporter"))
    assert "demo" in pm.names("task")
    spec = pm.resolve("backend", "cpu")
    assert spec.distribution == "treadle"
    assert spec.target == "treadle.builtin.cpu:CpuBackend"


def test_missing_first_party_name_says_what_to_install(pm):
    with pytest.raises(PluginError) as err:
        pm.resolve("backend", "xla")
    text = str(err.value)
    assert "--backend xla: no installed plugin provides backend 'xla'" in text
    assert "installed backends: cpu" in text
    assert "To add it: pip install " in text and "plugins/treadle-xla" in text  # from the repository until published


def test_typo_gets_a_suggestion(pm):
    with pytest.raises(PluginError, match="Did you mean 'cosine'"):
        pm.resolve("scheduler", "cosin")


def test_aliases_resolve_to_the_canonical_name(pm):
    assert pm.resolve("precision", "32-true").name == "fp32"


def test_module_attr_paths_resolve_without_a_plugin(pm):
    spec = pm.resolve("task", "json:dumps")
    assert spec.load() is __import__("json").dumps


def test_missing_library_names_the_module(pm):
    spec = pm.resolve("optimizer", "adamw_bnb_8bit")
    assert not spec.available()
    with pytest.raises(PluginError, match="bitsandbytes is not importable"):
        spec.load()


def test_import_failure_of_an_implementation_names_the_provider(pm):
    class Plugin:
        @hookimpl
        def treadle_register_tasks(self, register):
            register("ghost", "treadle_no_such_module.tasks:build")

    pm.register_module(Plugin(), "ghost", "treadle-ghost", "1.2")
    with pytest.raises(PluginError, match=r"task 'ghost' from treadle-ghost 1.2 failed to import"):
        pm.resolve("task", "ghost").load()


def test_a_misspelt_hook_marks_the_plugin_broken(pm, capsys):
    class Typo:
        @hookimpl
        def treadle_on_stepp_end(self):
            pass

    record = pm.register_module(Typo(), "typo")
    assert record.status == "broken"
    assert "did you mean treadle_on_step_end" in record.error
    assert "plugin typo" in capsys.readouterr().err


def test_a_registration_hook_that_raises_is_isolated(pm):
    class Bad:
        @hookimpl
        def treadle_register_backends(self, register):
            register("half", "x.y:Z")
            raise RuntimeError("boom")

    class Good:
        @hookimpl
        def treadle_register_backends(self, register):
            register("good", "x.y:Good")

    bad = pm.register_module(Bad(), "bad")
    pm.register_module(Good(), "good")
    assert pm.names("backend") == ["cpu", "good"]
    assert bad.status == "broken" and "RuntimeError: boom" in bad.error


def test_duplicate_names_are_an_error_naming_both(pm):
    class First:
        @hookimpl
        def treadle_register_reporters(self, register):
            register("shared", "a.b:C")

    class Second:
        @hookimpl
        def treadle_register_reporters(self, register):
            register("shared", "d.e:F")

    pm.register_module(First(), "first", "treadle-first", "1.0")
    second = pm.register_module(Second(), "second", "treadle-second", "2.0")
    assert pm.resolve("reporter", "shared").target == "a.b:C"
    assert second.status == "broken"
    assert "treadle-first 1.0" in second.error and "treadle-second 2.0" in second.error


def test_override_replaces_and_shadowing_a_builtin_warns(pm):
    class Shadow:
        @hookimpl
        def treadle_register_backends(self, register):
            register("cpu", "my.cpu:Faster", override=True)

    pm.register_module(Shadow(), "shadow", "treadle-shadow", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pm.resolve("backend", "cpu").target == "my.cpu:Faster"
    assert any("replaces treadle's builtin backend 'cpu'" in str(w.message) for w in caught)


def test_strict_mode_raises(monkeypatch):
    monkeypatch.setenv("TREADLE_STRICT_PLUGINS", "1")
    pm = TreadlePluginManager(autoload=False)

    class Typo:
        @hookimpl
        def treadle_on_trian_begin(self):
            pass

    with pytest.raises(PluginError, match="is broken"):
        pm.register_module(Typo(), "typo")


def test_auto_backend_picks_an_available_one(pm):
    assert pm.select_default("backend", args=None) == "cpu"


def test_plugin_arguments_are_namespaced(pm):
    class Args:
        @hookimpl
        def treadle_add_arguments(self, schema):
            schema.add("other_thing", type=int, default=1)

    record = pm.register_module(Args(), "mine")
    assert pm.argument_fields() == {}
    assert record.status == "broken" and "namespaced as 'mine_...'" in record.error


def test_plugin_arguments_cannot_shadow_core_fields(pm):
    class Args:
        @hookimpl
        def treadle_add_arguments(self, schema):
            schema.add("learning_rate", type=float, default=1.0)

    record = pm.register_module(Args(), "learning")
    pm.argument_fields()
    assert record.status == "broken" and "core treadle argument" in record.error


def test_run_hooks_name_the_plugin_that_raised():
    class Exploding:
        @hookimpl
        def treadle_on_log(self, logs):
            raise ValueError("bad log")

    hooks = RunHooks()
    hooks.register(Exploding(), name="exploding-callback")
    with pytest.raises(ValueError) as err:
        hooks.call("treadle_on_log", trainer=None, args=None, state=None, control=None, logs={})
    assert "treadle: raised in treadle_on_log of plugin exploding-callback" in err.value.__notes__


def test_run_hooks_reject_unknown_hook_names():
    class Typo:
        @hookimpl
        def treadle_on_lgo(self):
            pass

    with pytest.raises(pluggy.PluginValidationError, match="did you mean treadle_on_log"):
        RunHooks().register(Typo())


# --- the fixture distributions in tests/fixtures, installed into the test environment --------


def test_installed_plugins_load_and_broken_ones_are_isolated(installed_plugins, capsys):
    pm = TreadlePluginManager()
    records = {r.name: r for r in pm.collect_all()}
    good = records["fixture_good"]
    assert good.status == "ok"
    assert good.distribution == "treadle-fixture-good" and good.version == "0.0.1"
    assert good.provides == {"optimizer": ["fixture_sgd"], "reporter": ["fixture"]}
    assert good.arguments == ["fixture_good_tag", "fixture_good_repeat"]

    broken = records["fixture_broken"]
    assert broken.status == "broken"
    assert "No module named 'treadle_fixture_missing_dependency'" in broken.error

    dup = records["fixture_dup"]
    assert dup.status == "broken"
    assert "treadle 0.1.0" in dup.error and "treadle-fixture-dup 0.0.1" in dup.error
    assert pm.resolve("backend", "cpu").distribution == "treadle"
    assert "fixture_broken" in capsys.readouterr().err


def test_treadle_plugins_env_restricts_loading(installed_plugins, monkeypatch):
    monkeypatch.setenv("TREADLE_PLUGINS", "fixture_good")
    names = set(TreadlePluginManager().records)
    assert names == {"treadle", "fixture_good"}


def test_blocked_plugins_are_listed_as_blocked_and_not_loaded(installed_plugins, monkeypatch):
    monkeypatch.setenv("TREADLE_BLOCKED_PLUGINS", "fixture_broken,treadle-fixture-dup")
    manager = TreadlePluginManager()
    records = manager.records
    assert records["fixture_broken"].status == "blocked" and records["fixture_dup"].status == "blocked"
    assert records["fixture_good"].status == "ok"
    assert "cpu" in manager.names("backend") and manager.resolve("backend", "cpu").distribution == "treadle"
    assert "treadle_fixture_broken.hooks" not in sys.modules  # listed, never imported


def test_autoload_can_be_disabled(installed_plugins, monkeypatch):
    monkeypatch.setenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert set(TreadlePluginManager().records) == {"treadle"}


def test_plugins_text_lists_every_hook_and_blocked_plugins(installed_plugins, monkeypatch, capsys):
    """The text of `treadle plugins` shows what --json shows: all hooks, registration ones too, and blocked plugins."""
    import json

    from treadle.cli import main

    monkeypatch.setenv("TREADLE_BLOCKED_PLUGINS", "fixture_broken")
    assert main(["plugins", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    block = text.split("fixture_good  (", 1)[1].split("\n\n")[0]
    hooks_text = " ".join(block.split("hooks:", 1)[1].split())
    assert hooks_text.replace(" ", "").startswith(",".join(listed["fixture_good"]["hooks"]).replace(" ", ""))
    assert "treadle_register_reporters" in hooks_text
    assert "fixture_broken  (treadle-fixture-broken 0.0.1)  [blocked]" in text
    assert listed["fixture_broken"]["status"] == "blocked"
