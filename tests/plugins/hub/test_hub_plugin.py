"""treadle-hub as a plugin: light registration, what `treadle plugins` / `treadle env` show, argument checks."""

from __future__ import annotations

import subprocess
import sys

from hub_kit import TOKEN


def test_registration_imports_neither_the_hub_client_nor_torch(hub_env):
    code = ("import sys; from treadle.plugins import get_plugin_manager; pm = get_plugin_manager(); "
            "print(pm.names('hub'), sorted(pm.argument_fields())); "
            "print('huggingface_hub' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(hub_env), check=True).stdout
    names, loaded = out.strip().splitlines()
    assert "['huggingface']" in names and "hub_push_retries" in names and "hub_retry_delay" in names
    assert loaded == "False False"


def test_plugins_and_env_name_the_hub_but_never_the_token(hub_cli):
    listed = hub_cli("plugins")
    assert listed.returncode == 0 and "treadle-hub" in listed.stdout and "huggingface" in listed.stdout
    env = hub_cli("env", env={"HF_TOKEN": TOKEN})
    assert env.returncode == 0, env.stderr
    assert "huggingface_hub" in env.stdout and "HF_TOKEN" in env.stdout and TOKEN not in env.stdout


def test_bad_hub_arguments_are_reported_together(hub_cli):
    result = hub_cli("train", "--output_dir", "x", "--push_to_hub", "--hub_token", TOKEN, "--hub_push_retries", "-1",
                     "--hub_retry_delay", "-2", "--resume_from_checkpoint", "hub:", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    for message in ("hub_push_retries: must be 0 or more", "hub_retry_delay: must be 0 or more seconds",
                    "HF_HUB_OFFLINE is set", "names no repository"):
        assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and TOKEN not in result.stderr


def _env(variables):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TREADLE_DISABLE_PLUGIN_AUTOLOAD")}
    return {**env, **variables}
