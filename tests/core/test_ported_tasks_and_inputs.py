"""Tasks returning a mapping, and inputs that used to escape as a traceback or pass silently."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from checkpoint_standin import StandinTrainer
from trainer_kit import Classifier, make_args, make_data
from treadle import Trainer
from treadle.args import TrainingArguments
from treadle.checkpoint import load_checkpoint, resolve_resume_checkpoint, save_checkpoint
from treadle.cli import main
from treadle.errors import CheckpointError, UsageError
from treadle.plugins import TreadlePluginManager
from treadle.run import run_command


def mapping_task(args):
    return {"model": Classifier(), "train_dataset": make_data(32), "eval_dataset": make_data(16, seed=1)}


def mapping_with_typo(args):
    return {"model": Classifier(), "train_datset": make_data(32), "extra": 1}


def int_dataset_task(args):
    return {"model": Classifier(), "train_dataset": 64}


def _args(tmp_path, task, **overrides):
    values = {"output_dir": str(tmp_path / "out"), "task": f"test_ported_tasks_and_inputs:{task}", "max_steps": 2,
              "per_device_train_batch_size": 8, "disable_tqdm": True, "report_to": "none", "eval_strategy": "no"}
    values.update(overrides)
    return TrainingArguments(**values)


def test_a_task_may_return_a_mapping_of_task_parts(tmp_path, capsys):
    assert run_command("train", _args(tmp_path, "mapping_task", do_eval=True)) == 0
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "evaluation:" in out


def test_unknown_keys_of_a_task_mapping_are_named(tmp_path):
    with pytest.raises(UsageError, match=r"unknown key\(s\) 'train_datset', 'extra'; the keys a task may return are model, "):
        run_command("train", _args(tmp_path, "mapping_with_typo"))


def test_a_dataset_that_is_not_one_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="returned train_dataset of type int; a dataset is a torch Dataset"):
        run_command("train", _args(tmp_path, "int_dataset_task"))


@pytest.fixture
def checkpoint_dir(tmp_path):
    trainer = StandinTrainer(tmp_path)
    trainer.train_steps(2)
    return save_checkpoint(trainer, None)


def _rewrite_with_matching_manifest(directory, name, data):
    (directory / name).write_bytes(data)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "trainer_state.json"])
def test_garbage_that_matches_its_manifest_is_a_checkpoint_error(checkpoint_dir, name):
    _rewrite_with_matching_manifest(checkpoint_dir, name, b"this is not what treadle wrote" * 10)
    with pytest.raises(CheckpointError, match=f"{name} cannot be read"):
        load_checkpoint(StandinTrainer(checkpoint_dir.parent / "x"), checkpoint_dir)


def test_a_manifest_of_an_unknown_version_is_refused(checkpoint_dir):
    manifest = json.loads((checkpoint_dir / "manifest.json").read_text())
    manifest["version"] = 99
    (checkpoint_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="manifest version 99, which this treadle .* does not know"):
        resolve_resume_checkpoint(str(checkpoint_dir), checkpoint_dir.parent)


def test_an_unknown_name_in_treadle_plugins_is_reported(monkeypatch, capsys):
    monkeypatch.delenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TREADLE_PLUGINS", "name-that-does-not-exist")
    TreadlePluginManager()
    err = capsys.readouterr().err
    assert "TREADLE_PLUGINS names name-that-does-not-exist, which no installed plugin is" in err


def test_label_names_must_name_model_inputs(tmp_path):
    with pytest.raises(UsageError, match=r"--label_names target: Classifier.forward takes no argument 'target' \(it takes x, labels\)"):
        Trainer(Classifier(), make_args(tmp_path, label_names=["target"]))
    Trainer(Classifier(), make_args(tmp_path, label_names=["labels"]))  # a real input is fine
    loss = lambda outputs, labels, num_items_in_batch=None: torch.nn.functional.cross_entropy(outputs["logits"], labels)  # noqa: E731
    Trainer(Classifier(), make_args(tmp_path, label_names=["target"]), compute_loss_func=loss)  # popped before forward


def test_a_damaged_weights_file_in_a_cli_resume_is_one_message(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = "test_ported_tasks_and_inputs:mapping_task"
    common = ["--task", task, "--max_steps", "2", "--save_steps", "1", "--report_to", "none", "--output_dir", "out"]
    assert main(["train", *common]) == 0
    _rewrite_with_matching_manifest(tmp_path / "out" / "checkpoint-2", "model.safetensors", b"\x00" * 64)
    assert main(["train", *common, "--resume_from_checkpoint", "out/checkpoint-2"]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors cannot be read" in err and "Traceback" not in err


def test_resuming_a_finished_run_from_the_command_line_changes_nothing(tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    common = ["--task", "test_ported_tasks_and_inputs:mapping_task", "--max_steps", "6", "--save_steps", "4",
              "--lr_scheduler_type", "constant", "--report_to", "none", "--output_dir", "out"]
    assert main(["train", *common]) == 0
    trained = load_file(str(tmp_path / "out" / "model.safetensors"))
    capsys.readouterr()
    assert main(["train", *common, "--resume_from_checkpoint", "true"]) == 0
    assert "trained 6 steps" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    again = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(torch.equal(trained[k], again[k]) for k in trained)
