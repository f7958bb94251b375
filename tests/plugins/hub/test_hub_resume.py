"""``hub:ORG/NAME[/FOLDER][@REVISION]`` locations, resolved in-process (the exact resume itself
runs as ``treadle train`` in test_hub_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_kit import tiny_trainer
from treadle.checkpoint import resolve_resume_checkpoint, resolve_weights_checkpoint
from treadle.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("hub_env")


def test_locations_name_a_folder_and_a_revision(fake_hub, tmp_path):
    trainer = tiny_trainer(tmp_path / "kept", hub_strategy="all_checkpoints", hub_always_push=True, hub_revision="exp")
    trainer.train()
    args = trainer.args
    second = resolve_resume_checkpoint("hub:tester/kept/checkpoint-2@exp", tmp_path / "new", args)
    assert Path(second).name == "checkpoint-2" and (Path(second) / "manifest.json").is_file()
    local = tmp_path / "kept" / "checkpoint-2" / "model.safetensors"
    assert (Path(second) / "model.safetensors").read_bytes() == local.read_bytes()
    fourth = resolve_weights_checkpoint("hub:tester/kept/checkpoint-4", tmp_path / "new", args)  # hub_revision: exp
    assert Path(fourth).name == "checkpoint-4"
    # a bare name is the token's user's repository; all_checkpoints keeps no last-checkpoint/
    with pytest.raises(CheckpointError, match="tester/kept has no last-checkpoint/ folder .*--hub_strategy checkpoint"):
        resolve_resume_checkpoint("hub:kept@exp", tmp_path / "new", args)
    with pytest.raises(CheckpointError, match="cannot download it from the hub"):
        resolve_resume_checkpoint("hub:tester/kept/checkpoint-4@nope", tmp_path / "new", args)
