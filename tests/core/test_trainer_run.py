"""``treadle train | evaluate | predict`` after parsing: ``treadle.run.run_command``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from trainer_kit import Classifier, make_data
from treadle.args import TrainingArguments
from treadle.components import TaskParts
from treadle.errors import PluginError, UsageError
from treadle.run import run_command


def tiny_task(args):
    """A task for these tests: the kit's classifier on synthetic data."""
    return TaskParts(model=Classifier(), train_dataset=make_data(64), eval_dataset=make_data(32, seed=1),
                     test_dataset=make_data(24, seed=2))


def not_a_task(args):
    return (Classifier(),)


def _args(tmp_path, **overrides):
    values = {"output_dir": str(tmp_path / "out"), "task": "test_trainer_run:tiny_task", "max_steps": 12,
              "per_device_train_batch_size": 8, "learning_rate": 0.05, "eval_strategy": "steps", "eval_steps": 6,
              "logging_steps": 6, "save_steps": 6, "disable_tqdm": True, "report_to": "jsonl"}
    values.update(overrides)
    return TrainingArguments(**values)


def test_train_then_evaluate_then_predict_write_their_results(tmp_path, capsys):
    assert run_command("train", _args(tmp_path)) == 0
    out = tmp_path / "out"
    for name in ("model.safetensors", "train_results.json", "eval_results.json", "all_results.json",
                 "trainer_state.json", "metrics.jsonl", "checkpoint-6", "checkpoint-12"):
        assert (out / name).exists(), name
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 12
    printed = capsys.readouterr().out
    assert "trained 12 steps" in printed and "eval_loss" in printed

    trained_loss = json.loads((out / "eval_results.json").read_text())["eval_loss"]
    assert run_command("evaluate", _args(tmp_path)) == 0
    assert json.loads((out / "eval_results.json").read_text())["eval_loss"] == pytest.approx(trained_loss, rel=1e-6)
    assert "the model in" in capsys.readouterr().out

    assert run_command("predict", _args(tmp_path)) == 0
    assert np.load(out / "predictions.npy", allow_pickle=False).shape == (24, 3)
    assert "test_loss" in json.loads((out / "test_results.json").read_text())


def test_evaluate_from_a_checkpoint(tmp_path, capsys):
    run_command("train", _args(tmp_path))
    capsys.readouterr()
    run_command("evaluate", _args(tmp_path, resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-6")))
    assert "checkpoint-6" in capsys.readouterr().out


def test_the_builtin_demo_task_trains(tmp_path, capsys):
    args = TrainingArguments(output_dir=str(tmp_path / "demo"), max_steps=30, per_device_train_batch_size=64,
                             learning_rate=2e-3, eval_strategy="no", save_strategy="no", disable_tqdm=True)
    assert run_command("train", args) == 0
    assert (tmp_path / "demo" / "model.safetensors").exists()
    assert "trained 30 steps" in capsys.readouterr().out


def test_an_unknown_task_or_a_bad_one_is_a_clear_error(tmp_path):
    with pytest.raises(PluginError, match="no installed plugin provides task 'nope'"):
        run_command("train", _args(tmp_path, task="nope"))
    with pytest.raises(UsageError, match="must return treadle.TaskParts"):
        run_command("train", _args(tmp_path, task="test_trainer_run:not_a_task"))
