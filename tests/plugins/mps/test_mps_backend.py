"""treadle-mps: registration and its caveats everywhere; training where an MPS device exists (a Mac)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from treadle.args import TrainingArguments
from treadle.builtin.demo_task import build as build_demo
from treadle.config import check_arguments
from treadle.errors import UsageError
from treadle.plugins import get_plugin_manager
from treadle.trainer import Trainer

has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def test_hooks_module_does_not_import_torch():
    code = "import json, sys, treadle_mps.hooks; print(json.dumps('torch' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False


def test_registered_above_cpu_and_selected_by_the_old_flag(tmp_path):
    registry = get_plugin_manager().registry("backend")
    assert list(registry) == ["mps", "cpu"] and registry["mps"].distribution == "treadle-mps"
    with pytest.warns(FutureWarning, match="use_mps_device"):
        assert TrainingArguments(output_dir=str(tmp_path), use_mps_device=True).backend == "mps"


def test_more_than_one_process_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = TrainingArguments(output_dir=str(tmp_path), backend="mps", strategy="single")
    with pytest.raises(UsageError, match="'mps' runs in one process only"):
        check_arguments(args)


def test_env_shows_the_device_and_the_fallback_setting(capsys, monkeypatch):
    from treadle.cli import main

    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "- mps: PYTORCH_ENABLE_MPS_FALLBACK: 1" in out
    assert ("    - mps (treadle-mps): available" in out) == has_mps


@pytest.mark.skipif(has_mps, reason="checks a machine without MPS")
def test_without_mps_auto_takes_the_cpu_and_mps_says_why(tmp_path):
    from treadle_mps.backend import MpsBackend

    assert "MPS" in MpsBackend.unavailable_reason()
    assert TrainingArguments(output_dir=str(tmp_path)).device == torch.device("cpu")
    with pytest.raises(UsageError, match="--backend mps: "):
        Trainer(model=torch.nn.Linear(2, 2), args=TrainingArguments(output_dir=str(tmp_path), backend="mps"))


@pytest.mark.skipif(not has_mps, reason="needs an Apple-silicon MPS device")
def test_trains_and_checkpoints_on_mps(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), backend="mps", max_steps=6, per_device_train_batch_size=32,
                             report_to=["none"], disable_tqdm=True, save_strategy="steps", save_steps=6)
    assert args.device == torch.device("mps") and args.n_gpu == 1
    parts = build_demo(args)
    trainer = Trainer(model=parts.model, args=args, train_dataset=parts.train_dataset)
    trainer.train()
    assert next(trainer.model.parameters()).device.type == "mps" and not trainer.train_dataloader.pin_memory
    from safetensors.torch import load_file

    assert any("mps" in key for key in load_file(tmp_path / "checkpoint-6" / "rng_state.safetensors"))
