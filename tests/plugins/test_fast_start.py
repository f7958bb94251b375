"""With every first-party plugin installed, the light commands still import no heavy library.

`treadle --help`, `treadle plugins`, `treadle train --help` and argument parsing (`treadle args`
with each plugin's selecting flags) load every plugin's hooks module, never its implementation
or its library (torch, deepspeed, wandb, mlflow, tensorboard, huggingface_hub, optuna, ...).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = (
    "torch", "numpy", "deepspeed", "wandb", "mlflow", "tensorboard", "huggingface_hub", "optuna", "transformers",
    "datasets", "torch_xla", "treadle.trainer",
)
IMPLEMENTATIONS = (
    "treadle_amp.precision", "treadle_ddp.strategy", "treadle_fsdp.strategy", "treadle_deepspeed.strategy",
    "treadle_cuda.backend", "treadle_tensorboard.reporter", "treadle_wandb.reporter", "treadle_mlflow.reporter",
    "treadle_hub.sync", "treadle_optuna.backend",
)

COMMANDS = [
    ["--help"],
    ["plugins"],
    ["plugins", "--json"],
    ["train", "--help"],
    ["args", "--bf16", "--report_to", "tensorboard", "wandb", "mlflow", "--max_steps", "3"],
    ["args", "--fsdp", "full_shard", "--max_steps", "3"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_light_commands_stay_light_with_every_plugin_installed(argv):
    code = (
        "import sys\n"
        "from treadle.cli import main\n"
        f"status = main({argv!r})\n"
        f"loaded = [m for m in {HEAVY + IMPLEMENTATIONS!r} if m in sys.modules]\n"
        "print('LOADED', loaded, file=sys.stderr)\n"
        "sys.exit(status if not loaded else 99)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TREADLE_DISABLE_PLUGIN_AUTOLOAD"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_first_party_plugin_is_installed_and_ok():
    env = {k: v for k, v in os.environ.items() if k != "TREADLE_DISABLE_PLUGIN_AUTOLOAD"}
    result = subprocess.run([sys.executable, "-m", "treadle", "plugins", "--json"], capture_output=True, text=True,
                            timeout=120, env=env)
    import json

    records = {r["name"]: r for r in json.loads(result.stdout)}
    expected = {"amp", "ddp", "fsdp", "deepspeed", "cuda", "mps", "tensorboard", "wandb", "mlflow", "hub", "optuna"}
    assert expected <= set(records), sorted(records)
    assert all(records[name]["status"] == "ok" for name in expected), {n: records[n].get("error") for n in expected}
