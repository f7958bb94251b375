"""What stops a run at start, with one message: contradictory flags, a missing plugin, a device or
backend that cannot do the precision. And the plugin's registration stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from amp_kit import demo_trainer, make_args

import treadle_amp.hooks
from treadle.components import Backend
from treadle.errors import UsageError
from treadle.markers import hookimpl
from treadle.plugins import TreadlePluginManager, get_plugin_manager, reset_plugin_manager

TRAIN = ["train", "--task", "demo", "--max_steps", "1", "--report_to", "none", "--disable_tqdm"]


def test_bf16_and_fp16_together_are_a_usage_error(run_treadle):
    result = run_treadle(*TRAIN, "--bf16", "--fp16", env={"TREADLE_PLUGINS": "amp"})
    assert result.returncode == 2
    assert "fp16, bf16: choose one half-precision mode, not both" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--bf16", "--fp16", "--bf16_full_eval"])
def test_without_treadle_amp_the_flag_names_the_install(run_treadle, flag):
    result = run_treadle(*TRAIN, flag, env={"TREADLE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 2
    hint = next(line for line in result.stderr.splitlines() if "To add it:" in line)
    assert "pip install" in hint and "treadle-amp" in hint  # the name, or its folder while it is unpublished
    assert "Traceback" not in result.stderr


def test_apex_is_refused_when_the_arguments_are_checked(run_treadle):
    result = run_treadle(*TRAIN, "--bf16", "--half_precision_backend", "apex", env={"TREADLE_PLUGINS": "amp"})
    assert result.returncode == 2
    assert "'apex' (NVIDIA apex) is not supported" in result.stderr


def test_a_half_precision_backend_for_another_device_stops_the_run(run_treadle):
    result = run_treadle(*TRAIN, "--fp16", "--half_precision_backend", "cuda_amp", env={"TREADLE_PLUGINS": "amp"})
    assert result.returncode == 2
    assert "--half_precision_backend cuda_amp asks for cuda autocast, but this run trains on cpu" in result.stderr
    assert "Traceback" not in result.stderr


def test_cpu_amp_on_cpu_trains(tmp_path):
    trainer = demo_trainer(make_args(tmp_path, fp16=True, half_precision_backend="cpu_amp", max_steps=2))
    trainer.train()
    assert trainer.state.global_step == 2


class MetaBackend(Backend):
    """A device family torch cannot autocast on (the meta device): what fp16 must refuse at start."""

    name = "meta"

    @classmethod
    def is_available(cls) -> bool:
        return True

    def setup_device(self, local_rank: int) -> torch.device:
        return torch.device("meta")


class MetaPlugin:
    @hookimpl
    def treadle_register_backends(self, register):
        register("meta", f"{__name__}:MetaBackend")


@pytest.mark.parametrize("precision", ["fp16", "bf16", "bf16-true"])
def test_a_device_without_the_precision_is_a_clear_error_at_start(tmp_path, precision):
    pm = TreadlePluginManager(autoload=False)
    pm.register_module(treadle_amp.hooks, "amp")
    pm.register_module(MetaPlugin(), "meta")
    previous = get_plugin_manager()
    reset_plugin_manager(pm)
    try:
        with pytest.raises(UsageError, match=f"precision {precision}: torch has no autocast for meta devices"):
            demo_trainer(make_args(tmp_path, backend="meta", precision=precision))
    finally:
        reset_plugin_manager(previous)


def test_the_registration_module_imports_no_torch():
    code = "import sys, treadle_amp.hooks; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_treadle_plugins_and_env_show_the_precisions(run_treadle):
    listed = run_treadle("plugins", env={"TREADLE_PLUGINS": "amp"})
    assert listed.returncode == 0
    assert "precision: fp16, bf16, fp16-true, bf16-true" in listed.stdout
    env = run_treadle("env", env={"TREADLE_PLUGINS": "amp"})
    assert env.returncode == 0 and "cpu: fp16, bf16" in env.stdout


def test_fp16_true_warns_about_adams_default_epsilon(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="treadle"):
        demo_trainer(make_args(tmp_path, precision="fp16-true"))
        demo_trainer(make_args(tmp_path, precision="fp16-true", adam_epsilon=1e-4))
        demo_trainer(make_args(tmp_path, fp16_full_eval=True))  # the eval precision trains nothing
    warned = [r.getMessage() for r in caplog.records if "adam_epsilon" in r.getMessage()]
    assert len(warned) == 1 and "is zero in float16" in warned[0]
