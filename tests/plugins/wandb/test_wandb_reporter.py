"""treadle-wandb: real offline runs, their ``.wandb`` run files read back record by record."""

from __future__ import annotations

import socket
import time

import pytest
from reporter_kit import RaiseAtStep, demo_args, demo_trainer, logged
from wandb_records import read_run, run_files


def _rows(run, key):
    """``(global step, value)`` of ``key`` in the run's history rows."""
    return [(row["train/global_step"], row[key]) for row in run.history if key in row]


def test_a_finished_run_has_the_config_the_metrics_by_step_and_exit_code_zero(tmp_path):
    out = tmp_path / "out"
    args = demo_args(out, "wandb", run_name="wb-check", hub_token="hf_secret_token",
                     plugin_options={"wandb_project": "treadle-tests", "wandb_tags": "cpu, demo", "wandb_group": "g1"})
    trainer = demo_trainer(args)
    trainer.train()
    trainer.evaluate()  # after training, from Python: the same run
    trainer.end_run()

    (path,) = run_files(out)
    run = read_run(path)
    assert (run.project, run.name, run.group, run.tags) == ("treadle-tests", "wb-check", "g1", ["cpu", "demo"])
    assert run.config["learning_rate"] == 2e-3 and run.config["max_steps"] == 8
    assert run.config["hub_token"] == "***" and "hf_secret_token" not in path.read_bytes().decode("latin-1")
    assert run.config["model/num_parameters"] > 0
    for key, name in (("loss", "train/loss"), ("learning_rate", "train/learning_rate"), ("grad_norm", "train/grad_norm")):
        assert _rows(run, name) == [(step, pytest.approx(value)) for step, value in logged(trainer, key)], name
    assert [step for step, _ in _rows(run, "eval/loss")] == [4, 8, 8]  # two during training, one after it
    assert run.exit_code == 0


def test_a_run_whose_training_raises_is_marked_failed(tmp_path):
    trainer = demo_trainer(demo_args(tmp_path / "out", "wandb"), [RaiseAtStep(3)])
    with pytest.raises(RuntimeError, match="broken at step 3"):
        trainer.train()
    (path,) = run_files(tmp_path / "out")
    run = read_run(path)
    assert run.exit_code == 1
    assert [step for step, _ in _rows(run, "train/loss")] == [2]


def test_a_resume_continues_the_same_run(tmp_path):
    out = tmp_path / "out"
    first = demo_trainer(demo_args(out, "wandb", save_strategy="steps", save_steps=4, eval_strategy="no"), [RaiseAtStep(6)])
    with pytest.raises(RuntimeError):
        first.train()
    resumed = demo_trainer(demo_args(out, "wandb", save_strategy="steps", save_steps=4, eval_strategy="no"))
    resumed.train(resume_from_checkpoint=True)
    resumed.end_run()

    first_file, second_file = run_files(out)
    one, two = read_run(first_file), read_run(second_file)
    assert one.run_id == two.run_id  # (offline, wandb cannot tell the file that it resumed: the id says it)
    assert (one.exit_code, two.exit_code) == (1, 0)
    assert [step for step, _ in _rows(two, "train/loss")] == [6, 8]


def test_checkpoints_become_versions_of_the_model_artifact(tmp_path):
    out = tmp_path / "out"
    args = demo_args(out, "wandb", save_strategy="steps", save_steps=4, eval_strategy="no",
                     plugin_options={"wandb_log_model": "checkpoint"})
    trainer = demo_trainer(args)
    trainer.train()
    trainer.end_run()
    run = read_run(run_files(out)[0])
    assert [a["name"] for a in run.artifacts] == [f"model-{run.run_id}"] * 2
    assert [set(a["aliases"]) - {"latest"} for a in run.artifacts] == [{"checkpoint-4"}, {"checkpoint-8"}]
    assert {"model.safetensors", "manifest.json", "trainer_state.json"} <= set(run.artifacts[0]["files"])


def test_treadle_train_uploads_the_final_model_and_closes_the_run_after_its_evaluation(tmp_path, run_treadle):
    result = run_treadle("train", "--output_dir", tmp_path / "run", "--max_steps", "4", "--logging_steps", "2",
                         "--eval_strategy", "no", "--do_eval", "true", "--disable_tqdm", "true", "--report_to", "wandb",
                         "--wandb_log_model", "end", "--per_device_eval_batch_size", "500")
    assert result.returncode == 0, result.stderr
    (path,) = run_files(tmp_path / "run")
    run = read_run(path)
    assert [set(a["aliases"]) for a in run.artifacts] == [{"final", "latest"}]
    assert "model.safetensors" in run.artifacts[0]["files"] and "metrics.jsonl" not in run.artifacts[0]["files"]
    assert [step for step, _ in _rows(run, "eval/loss")] == [4]  # the final evaluation, in the same run
    assert run.exit_code == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_wandb_server_is_a_clear_error_within_seconds(tmp_path, run_treadle):
    start = time.monotonic()
    result = run_treadle("train", "--output_dir", tmp_path / "run", "--max_steps", "2", "--report_to", "wandb",
                         env={"WANDB_MODE": "online", "WANDB_BASE_URL": f"http://127.0.0.1:{_closed_port()}",
                              "WANDB_API_KEY": "x" * 40})
    elapsed = time.monotonic() - start
    assert result.returncode == 2
    assert "wandb: cannot reach http://127.0.0.1:" in result.stderr and "WANDB_MODE=offline" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 60  # python + torch start-up included; the probe itself refuses at once
    assert not run_files(tmp_path / "run")


def test_a_resume_while_the_first_trainer_still_holds_the_run_takes_it_over(tmp_path):
    out = tmp_path / "out"
    options = dict(save_strategy="steps", save_steps=4, eval_strategy="no", max_steps=4)
    first = demo_trainer(demo_args(out, "wandb", **options))
    first.train()  # not ended: its run is still open in this process
    resumed = demo_trainer(demo_args(out, "wandb", **{**options, "max_steps": 6}))
    resumed.train(resume_from_checkpoint=True)
    resumed.end_run()
    first.end_run()  # nothing left to close
    one, two = (read_run(path) for path in run_files(out))
    assert one.run_id == two.run_id and (one.exit_code, two.exit_code) == (0, 0)
    assert [step for step, _ in _rows(two, "train/loss")] == [6]
