"""User mistakes end in one clear message and a non-zero exit, never a traceback (in-process CLI)."""

import os
import sys

import pytest

from treadle.cli import main

QUICK = ["--max_steps", "1", "--eval_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """Run in tmp_path with sys.path / sys.modules restored afterwards (user task modules get imported)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name, module in list(sys.modules.items()):  # only the user's modules, which live in tmp_path
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def write_task(directory, name, body):
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "from treadle.builtin.demo_task import build as demo_build\nfrom treadle.components import TaskParts\n"
    path.write_text(header + body)
    return path


def test_task_given_as_a_python_file_path(user_dir, capsys):
    write_task(user_dir, "tasks/file_task.py", "def build(args):\n    print('FILE TASK')\n    return demo_build(args)\n")
    assert main(["train", "--task", "tasks/file_task.py:build", *QUICK, "--output_dir", "out"]) == 0
    out = capsys.readouterr().out
    assert "FILE TASK" in out and "trained 1 steps" in out


def test_missing_task_file_is_one_message(user_dir, capsys):
    assert main(["train", "--task", "nowhere/task.py:build", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "nowhere/task.py" in err and "Traceback" not in err


# --- credentials never appear in a message


def test_alias_conflict_masks_both_tokens(capsys):
    assert main(["args", "--push_to_hub_token", "SECRET-A", "--hub_token", "SECRET-B"]) == 2
    err = capsys.readouterr().err
    assert "push_to_hub_token" in err and "SECRET" not in err


def test_wrong_type_of_token_is_masked():
    from treadle.args import TrainingArguments

    with pytest.raises(ValueError) as info:
        TrainingArguments(hub_token=["SECRET-C"])
    assert "hub_token" in str(info.value) and "SECRET" not in str(info.value)


def test_config_conversion_masks_a_secret_field():
    from treadle.config import FieldInfo, _check_choice, convert
    from treadle.errors import UsageError

    with pytest.raises(UsageError) as info:
        convert(FieldInfo("wandb_api_key", int, None), "SECRET-D", where="command line")
    assert "wandb_api_key" in str(info.value) and "SECRET" not in str(info.value)
    with pytest.raises(UsageError) as info:
        _check_choice(FieldInfo("tracker_token", str, None, choices=("SECRET-E",)), "SECRET-F", "command line")
    assert "tracker_token" in str(info.value) and "SECRET-F" not in str(info.value)


# --- a bad output_dir is found before training, named in one message


@pytest.mark.parametrize("output_dir", ["afile/out", "afile"])
def test_bad_output_dir_fails_before_training(user_dir, capsys, output_dir):
    (user_dir / "afile").write_text("not a directory")
    assert main(["train", *QUICK, "--output_dir", output_dir]) == 2
    err = capsys.readouterr().err
    assert f"--output_dir {output_dir}" in err and "Traceback" not in err
    assert (user_dir / "afile").read_text() == "not a directory"


def test_trainer_train_checks_output_dir_first(tmp_path):
    import torch

    from treadle.args import TrainingArguments
    from treadle.errors import UsageError
    from treadle.trainer import Trainer

    (tmp_path / "afile").write_text("")
    args = TrainingArguments(output_dir=str(tmp_path / "afile" / "out"), max_steps=1, report_to="none")
    trainer = Trainer(model=torch.nn.Linear(2, 1), args=args, train_dataset=[{"x": 1}])
    with pytest.raises(UsageError, match="part of that path is a file"):
        trainer.train()


@pytest.mark.skipif(getattr(os, "geteuid", lambda: 0)() == 0, reason="root writes anywhere (or no permission bits)")
def test_unwritable_output_dir_is_a_usage_error(tmp_path):
    from treadle.errors import UsageError
    from treadle.output_dir import prepare_output_dir

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="cannot write files there"):
            prepare_output_dir(locked)
    finally:
        locked.chmod(0o700)


# --- a broken task is one message naming the task


@pytest.mark.parametrize(
    "body, status, message",
    [
        ("def build(args):\n    raise RuntimeError('dataset missing')\n", 1,
         "task 'broken:build' raised RuntimeError: dataset missing (at "),
        ("build = 42\n", 2, "task 'broken:build' is a int, not a function"),
        ("def build(args, tokenizer):\n    return None\n", 2,
         "cannot be called with the training arguments (its signature is build(args, tokenizer))"),
        ("def build(args):\n    return [None]\n", 2,
         "task 'broken:build' returned list; a task must return treadle.TaskParts or a mapping"),
        ("def build(args):\n    return TaskParts(model='not a model')\n", 2,
         "Trainer needs the model as a torch.nn.Module, got builtins.str"),
    ],
    ids=["raises", "not-callable", "signature", "not-taskparts", "not-a-module"],
)
def test_broken_task_is_one_message(user_dir, capsys, monkeypatch, body, status, message):
    monkeypatch.delenv("TREADLE_DEBUG", raising=False)
    write_task(user_dir, "broken.py", body)
    assert main(["train", "--task", "broken:build", *QUICK, "--output_dir", "out"]) == status
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_task_traceback_is_shown_with_treadle_debug(user_dir, capsys, monkeypatch):
    monkeypatch.setenv("TREADLE_DEBUG", "1")
    write_task(user_dir, "broken.py", "def build(args):\n    raise RuntimeError('dataset missing')\n")
    assert main(["train", "--task", "broken:build", *QUICK]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "raise RuntimeError('dataset missing')" in err


# --- optimizer options and compile backends are checked values, not tracebacks


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--optim_args", "betas=0.9"], "--optim adamw_torch --optim_args betas=0.9: AdamW rejected its options"),
        (["--optim", "sgd", "--optim_args", "momentum=-1"], "--optim sgd --optim_args momentum=-1: SGD rejected its options"),
    ],
    ids=["type", "value"],
)
def test_bad_optimizer_options_are_one_message(tmp_path, capsys, argv, message):
    assert main(["train", *QUICK, "--output_dir", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_compile_backend_lists_the_valid_ones(tmp_path, capsys):
    assert main(["train", *QUICK, "--output_dir", str(tmp_path / "out"), "--torch_compile_backend", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "--torch_compile_backend 'nosuch' is not a torch.compile backend" in err
    assert "inductor" in err and "Traceback" not in err


# --- evaluate / predict need only the weights of a checkpoint


@pytest.fixture(scope="module")
def trained_checkpoints(tmp_path_factory):
    """A save_only_model checkpoint and a full one, from two one-step runs."""
    root = tmp_path_factory.mktemp("checkpoints")
    common = [*QUICK, "--save_strategy", "steps", "--save_steps", "1"]
    assert main(["train", *common, "--output_dir", str(root / "weights_only"), "--save_only_model", "true"]) == 0
    assert main(["train", *common, "--output_dir", str(root / "full")]) == 0
    return root / "weights_only" / "checkpoint-1", root / "full" / "checkpoint-1"


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_accept_a_save_only_model_checkpoint(trained_checkpoints, tmp_path, capsys, command):
    weights_only, _ = trained_checkpoints
    argv = [command, "--report_to", "none", "--disable_tqdm", "true", "--output_dir", str(tmp_path)]
    assert main([*argv, "--resume_from_checkpoint", str(weights_only)]) == 0
    assert f"the model in {weights_only}" in capsys.readouterr().out


def test_evaluate_ignores_a_damaged_optimizer_file_but_not_damaged_weights(trained_checkpoints, tmp_path, capsys):
    import shutil

    _, full = trained_checkpoints
    damaged = tmp_path / "checkpoint-1"
    shutil.copytree(full, damaged)
    (damaged / "optimizer.safetensors").write_bytes(b"garbage")
    argv = ["evaluate", "--report_to", "none", "--disable_tqdm", "true", "--output_dir", str(tmp_path / "eval")]
    assert main([*argv, "--resume_from_checkpoint", str(damaged)]) == 0
    capsys.readouterr()
    (damaged / "model.safetensors").write_bytes(b"garbage")
    assert main([*argv, "--resume_from_checkpoint", str(damaged)]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "Traceback" not in err


# --- `treadle train` does not evaluate the final weights twice


def _eval_records(output_dir):
    import json

    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "eval_loss" in r]


def test_final_evaluation_reuses_the_last_steps_evaluation(tmp_path, capsys):
    argv = ["train", "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2", "--report_to", "jsonl",
            "--disable_tqdm", "true", "--output_dir", str(tmp_path)]
    assert main(argv) == 0
    assert "evaluation: eval_accuracy" in capsys.readouterr().out
    assert len(_eval_records(tmp_path)) == 1
    assert (tmp_path / "eval_results.json").is_file()


def test_final_evaluation_runs_when_the_last_step_was_not_evaluated(tmp_path):
    argv = ["train", "--max_steps", "3", "--eval_strategy", "steps", "--eval_steps", "2", "--report_to", "jsonl",
            "--disable_tqdm", "true", "--output_dir", str(tmp_path)]
    assert main(argv) == 0
    assert [r["step"] for r in _eval_records(tmp_path)] == [2, 3]


def test_checkpoint_directory_that_cannot_be_created_is_a_checkpoint_error(tmp_path):
    import torch

    from treadle.args import TrainingArguments
    from treadle.checkpoint import save_checkpoint
    from treadle.errors import CheckpointError
    from treadle.trainer import Trainer

    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")
    trainer = Trainer(model=torch.nn.Linear(2, 1), args=args)
    (tmp_path / "afile").write_text("")
    args.output_dir = str(tmp_path / "afile" / "out")  # e.g. the output disk changed under a running job
    with pytest.raises(CheckpointError, match="could not create .*checkpoint-0"):
        save_checkpoint(trainer)
