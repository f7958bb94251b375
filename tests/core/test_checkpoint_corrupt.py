"""A damaged checkpoint is detected, named, and `true` falls back to the newest valid one."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from checkpoint_standin import StandinTrainer

from treadle.checkpoint import load_checkpoint, resolve_resume_checkpoint, save_checkpoint, verify_checkpoint
from treadle.errors import CheckpointError


@pytest.fixture
def two_checkpoints(tmp_path):
    trainer = StandinTrainer(tmp_path)
    trainer.train_steps(2)
    older = save_checkpoint(trainer, None)
    trainer.train_steps(2)
    newer = save_checkpoint(trainer, None)
    return older, newer


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": ("model.safetensors", _truncate, r"model\.safetensors has \d+ bytes but the manifest says"),
    "flipped byte in optimizer": ("optimizer.safetensors", _flip_byte, r"optimizer\.safetensors does not match its sha256"),
    "flipped byte in state": ("trainer_state.json", _flip_byte, r"trainer_state\.json does not match its sha256"),
    "deleted rng file": ("rng_state.safetensors", lambda p: p.unlink(), r"rng_state\.safetensors is missing"),
    "missing manifest": ("manifest.json", lambda p: p.unlink(), r"manifest\.json is missing: .* not a complete"),
    "garbled manifest": ("manifest.json", _truncate, r"manifest\.json is unreadable or damaged"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damage_is_named_and_true_falls_back(two_checkpoints, case, caplog):
    older, newer = two_checkpoints
    name, damage, message = DAMAGE[case]
    damage(newer / name)

    with pytest.raises(CheckpointError, match=message):
        resolve_resume_checkpoint(str(newer), newer.parent)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(StandinTrainer(newer.parent / "x"), newer)

    with caplog.at_level(logging.WARNING, logger="treadle.checkpoint"):
        chosen = resolve_resume_checkpoint("true", newer.parent)
    assert chosen == older
    assert "not resuming from checkpoint-4" in caplog.text and name in caplog.text
    assert "resuming from" in caplog.text and "checkpoint-2" in caplog.text


def test_damage_after_a_verified_load_is_still_caught(two_checkpoints):
    _, newer = two_checkpoints
    verify_checkpoint(newer)  # cache the good verdict
    _flip_byte(newer / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        verify_checkpoint(newer)


def test_no_valid_checkpoint_lists_every_problem(two_checkpoints):
    older, newer = two_checkpoints
    (older / "manifest.json").unlink()
    _truncate(newer / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        resolve_resume_checkpoint(True, older.parent)
    text = str(info.value)
    assert "no valid checkpoint" in text and "checkpoint-2" in text and "checkpoint-4" in text


def test_true_without_any_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="there is no checkpoint-<step> directory"):
        resolve_resume_checkpoint("TRUE", tmp_path)


def test_missing_path_and_output_dir_given_as_path(two_checkpoints):
    older, _ = two_checkpoints
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        resolve_resume_checkpoint(str(older.parent / "checkpoint-99"), older.parent)
    with pytest.raises(CheckpointError, match="is an output directory, not a checkpoint; pass one of its checkpoint-<step> directories"):
        resolve_resume_checkpoint(str(older.parent), older.parent)


def test_no_resume_values(tmp_path):
    for value in (None, False, "", "false", "False"):
        assert resolve_resume_checkpoint(value, tmp_path) is None


def test_interrupted_save_leaves_nothing_that_resumes(two_checkpoints):
    """A staging directory (what a crash mid-save leaves) is never taken for a checkpoint."""
    older, newer = two_checkpoints
    shutil.copytree(newer, older.parent / ".incomplete-checkpoint-6")
    assert resolve_resume_checkpoint(True, older.parent) == newer
    trainer = StandinTrainer(older.parent)
    trainer.state.global_step = 8
    save_checkpoint(trainer, None)
    assert not (older.parent / ".incomplete-checkpoint-6").exists()  # the next save clears leftovers


def test_a_file_missing_from_the_manifest_is_refused(two_checkpoints, caplog):
    import json

    _, newer = two_checkpoints
    manifest = json.loads((newer / "manifest.json").read_text())
    del manifest["files"]["scheduler.json"]
    (newer / "manifest.json").write_text(json.dumps(manifest))
    trainer = StandinTrainer(newer.parent / "x")
    before = trainer.lr_scheduler.state_dict()
    with caplog.at_level(logging.WARNING, logger="treadle.checkpoint"):
        load_checkpoint(trainer, newer)  # the scheduler file is not part of the verified checkpoint: not read
    assert trainer.lr_scheduler.state_dict()["last_epoch"] == before["last_epoch"]
    assert "holds no scheduler state" in caplog.text
    del manifest["files"]["model.safetensors"]
    (newer / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not in the checkpoint's manifest"):
        load_checkpoint(trainer, newer)
    assert torch.is_tensor(trainer.model.hidden.weight)


def test_a_checkpoint_of_another_model_is_a_clear_error(two_checkpoints):
    _, newer = two_checkpoints
    other = StandinTrainer(newer.parent / "x")
    other.model.hidden = torch.nn.Linear(8, 9)
    with pytest.raises(CheckpointError, match=r"(?s)model\.safetensors does not fit the model of this run: .*hidden\.weight"):
        load_checkpoint(other, newer)


def test_state_that_needs_pickle_fails_the_save_cleanly(tmp_path):
    trainer = StandinTrainer(tmp_path)
    trainer.train_steps(1)
    trainer.lr_scheduler.odd = object()  # lands in the scheduler's state_dict
    with pytest.raises(CheckpointError, match=r"scheduler\.odd is a object, which treadle cannot store without pickle"):
        save_checkpoint(trainer, None)
    assert list(tmp_path.iterdir()) == []  # neither a checkpoint nor a staging directory


def test_a_different_batch_size_warns(tmp_path, caplog):
    trainer = StandinTrainer(tmp_path)
    trainer.state.train_batch_size = 8
    path = save_checkpoint(trainer, None)
    other = StandinTrainer(tmp_path / "x")
    other.state.train_batch_size = 16
    with caplog.at_level(logging.WARNING, logger="treadle.checkpoint"):
        load_checkpoint(other, path)
    assert "batch size of 8 per device, this run uses 16" in caplog.text


def test_a_full_disk_is_a_clear_error_and_leaves_no_staging(tmp_path, monkeypatch):
    import errno

    from treadle import checkpoint

    trainer = StandinTrainer(tmp_path)
    trainer.train_steps(1)
    first = save_checkpoint(trainer, None)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_manifest", disk_full)
    trainer.train_steps(1)
    with pytest.raises(CheckpointError, match=r"could not write .*checkpoint-2: .*No space left on device\. The earlier"):
        save_checkpoint(trainer, None)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1"]
    assert resolve_resume_checkpoint(True, tmp_path) == first


def test_a_damaged_best_checkpoint_keeps_the_final_weights(tmp_path, caplog):
    from treadle.checkpoint import load_best_model

    trainer = StandinTrainer(tmp_path, metric_for_best_model="loss")
    trainer.train_steps(1)
    best = save_checkpoint(trainer, {"eval_loss": 0.1})
    trainer.train_steps(1)
    final = trainer.weights()
    _flip_byte(best / "model.safetensors")
    assert not load_best_model(trainer)
    assert all(torch.equal(v, final[k]) for k, v in trainer.weights().items())
    assert "cannot load the best model" in caplog.text and "model.safetensors" in caplog.text
