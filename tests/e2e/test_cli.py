"""The `treadle` command end to end, in subprocesses, as a user runs it."""

import json
import subprocess
import sys

import pytest

import treadle

LIGHT_COMMANDS = [
    ["--help"],
    ["--version"],
    ["plugins"],
    ["plugins", "--json"],
    ["train", "--help"],
    ["args", "--max_steps", "3"],
    ["train", "--backend", "xla"],
]


@pytest.mark.parametrize("argv", LIGHT_COMMANDS, ids=" ".join)
def test_light_commands_import_neither_torch_nor_plugin_implementations(argv, installed_plugins):
    expected = 2 if argv[:1] == ["train"] and "xla" in argv else 0
    """--help, plugins and argument parsing stay fast: no torch, no plugin implementation module."""
    code = (
        "import sys\n"
        "from treadle.cli import main\n"
        f"status = main({argv!r})\n"
        f"assert status == {expected!r}, status\n"
        "heavy = [m for m in ('torch', 'numpy', 'safetensors', 'treadle_fixture_good.reporter', 'treadle.trainer', "
        "'treadle.builtin.cpu', 'treadle.builtin.reporters', 'treadle.builtin.optimizers') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "sys.exit(0 if not heavy else 99)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_version(run_treadle):
    result = run_treadle("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"treadle {treadle.__version__}"


def test_help_lists_commands(run_treadle):
    result = run_treadle("--help")
    assert result.returncode == 0
    for command in ("train", "evaluate", "predict", "plugins", "env", "args", "verify-resume"):
        assert command in result.stdout


def test_train_help_groups_core_then_plugins(run_treadle, installed_plugins):
    out = run_treadle("train", "--help").stdout
    assert "--per_device_train_batch_size INT" in out
    assert out.index("Output:") < out.index("Plugin fixture_good")
    assert "--fixture_good_tag STR" in out
    assert "Deprecated aliases:" in out and "deprecated: use --eval_strategy" in out
    assert out.lower().count("deprecated: use") == out.count("deprecated: use --")  # each says it once, as a flag
    backend_help = out[out.index("--backend") :].split("\n  --")[0]
    assert "cpu" in backend_help and "auto" in backend_help


def test_missing_backend_is_one_clear_error(run_treadle):
    result = run_treadle("train", "--backend", "xla")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no installed plugin provides backend 'xla'" in result.stderr
    assert "installed backends: cpu" in result.stderr
    assert "plugins/treadle-xla" in result.stderr  # installed from the repository until published


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--max_stepz", "3"], "did you mean --max_steps"),
        (["train", "--max_steps", "three"], "expects INT"),
        (["train", "missing.yaml"], "does not exist"),
        (["trian"], "Did you mean 'train'"),
        (["plugins", "--verbose"], "unknown argument"),
    ],
)
def test_usage_errors_exit_2_without_traceback(run_treadle, argv, message):
    result = run_treadle(*argv)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_file_is_a_usage_error(run_treadle, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    result = run_treadle("train", "bad.json")
    assert result.returncode == 2 and "is not valid JSON" in result.stderr and "Traceback" not in result.stderr


def test_plugins_lists_status_provider_and_broken_reason(run_treadle, installed_plugins):
    result = run_treadle("plugins")
    assert result.returncode == 0
    assert "treadle  (treadle " in result.stdout
    assert "fixture_good  (treadle-fixture-good 0.0.1)  [ok]" in result.stdout
    assert "reporter: fixture" in result.stdout
    assert "fixture_broken  (treadle-fixture-broken 0.0.1)  [broken]" in result.stdout
    assert "treadle_fixture_missing_dependency" in result.stdout


def test_plugins_json(run_treadle, installed_plugins):
    result = run_treadle("plugins", "--json")
    data = {p["name"]: p for p in json.loads(result.stdout)}
    assert data["treadle"]["provides"]["backend"] == ["cpu"]
    assert data["fixture_good"]["arguments"] == ["fixture_good_tag", "fixture_good_repeat"]
    assert data["fixture_dup"]["status"] == "broken"
    assert "claimed by both treadle" in data["fixture_dup"]["error"]


def test_env_is_a_bug_report_block(installed_plugins, capsys):
    """In-process: a subprocess would pay for importing torch again (the block reports its version)."""
    from treadle.cli import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"- treadle version: {treadle.__version__}" in out
    assert "- torch: " in out
    assert "- fixture_good: fixture-good: ready" in out
    assert "fixture_broken: treadle-fixture-broken 0.0.1 [broken" in out


def test_args_shows_provenance(run_treadle, tmp_path):
    (tmp_path / "run.yaml").write_text("seed: 5\nlearning_rate: 0.01\n")
    result = run_treadle("args", "--per_device_train_batch_size", "32", "--bf16", "run.yaml", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["per_device_train_batch_size"] == {"value": 32, "source": "command line"}
    assert data["seed"] == {"value": 5, "source": "config file run.yaml"}
    assert data["adam_beta2"]["source"] == "default"
    assert data["precision"]["value"] == "bf16" and data["precision"]["source"].startswith("implied")
    assert data["eval_strategy"]["source"] == "default of task 'demo'"
    # bf16 needs treadle-amp: `args` still shows the arguments, and warns
    assert "plugins/treadle-amp" in result.stderr


def test_plugin_argument_from_cli(run_treadle, installed_plugins):
    result = run_treadle("args", "--fixture_good_tag", "hello", "--changed")
    assert result.returncode == 0, result.stderr
    assert "fixture_good_tag" in result.stdout and '"hello"' in result.stdout and "command line" in result.stdout
    bad = run_treadle("args", "--fixture_good_repeat", "0")
    assert bad.returncode == 2 and "--fixture_good_repeat must be at least 1" in bad.stderr


def test_strict_mode_turns_a_broken_plugin_into_an_error(run_treadle, installed_plugins):
    result = run_treadle("plugins", env={"TREADLE_STRICT_PLUGINS": "1"})
    assert result.returncode == 2
    assert "fixture_broken" in result.stderr and "Traceback" not in result.stderr
