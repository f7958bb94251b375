"""treadle-mlflow against a real ``mlflow server`` (sqlite store) on 127.0.0.1, read back with MlflowClient."""

from __future__ import annotations

import logging
import time

import pytest
from mlflow import MlflowClient
from mlflow_server import MlflowServer, free_port
from reporter_kit import RaiseAtStep, demo_args, demo_trainer, logged
from treadle.errors import UsageError
from treadle.markers import hookimpl


def _args(out, server, **options):
    overrides = {key: options.pop(key) for key in list(options) if not key.startswith("mlflow_")}
    plugin_options = {"mlflow_tracking_uri": server.uri, **options}
    return demo_args(out, "mlflow", plugin_options=plugin_options, **overrides)


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def _only_run(client, experiment):
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def test_params_metrics_by_step_and_a_finished_run(tmp_path, mlflow_server):
    args = _args(tmp_path / "out", mlflow_server, mlflow_experiment="basics", mlflow_tags='{"team": "vision"}',
                 run_name="mlf-check", hub_token="hf_secret_token", hub_model_id="x" * 7000)
    trainer = demo_trainer(args)
    trainer.train()
    trainer.evaluate()
    trainer.end_run()

    client = MlflowClient(mlflow_server.uri)
    run = _only_run(client, "basics")
    assert (run.info.status, run.info.run_name, run.data.tags["team"]) == ("FINISHED", "mlf-check", "vision")
    params = run.data.params
    assert params["learning_rate"] == "0.002" and params["max_steps"] == "8" and params["hub_token"] == "***"
    assert params["hub_model_id"] == "x" * 6000  # cut to MLflow's limit
    assert len(params) > 100  # more than one batch of params
    for key, name in (("loss", "train/loss"), ("learning_rate", "train/learning_rate"), ("grad_norm", "train/grad_norm")):
        assert _history(client, run.info.run_id, name) == [(s, pytest.approx(v)) for s, v in logged(trainer, key)], name
    assert [step for step, _ in _history(client, run.info.run_id, "eval/loss")] == [4, 8, 8]  # the last after training


def test_a_run_whose_training_raises_is_failed(tmp_path, mlflow_server):
    trainer = demo_trainer(_args(tmp_path / "out", mlflow_server, mlflow_experiment="crash"), [RaiseAtStep(3)])
    with pytest.raises(RuntimeError, match="broken at step 3"):
        trainer.train()
    client = MlflowClient(mlflow_server.uri)
    run = _only_run(client, "crash")
    assert run.info.status == "FAILED"
    assert [step for step, _ in _history(client, run.info.run_id, "train/loss")] == [2]


def test_a_resume_continues_the_same_run(tmp_path, mlflow_server):
    out = tmp_path / "out"
    options = dict(mlflow_experiment="resume", save_strategy="steps", save_steps=4, eval_strategy="no")
    first = demo_trainer(_args(out, mlflow_server, **options), [RaiseAtStep(6)])
    with pytest.raises(RuntimeError):
        first.train()
    resumed = demo_trainer(_args(out, mlflow_server, **options))
    resumed.train(resume_from_checkpoint=True)
    resumed.end_run()

    client = MlflowClient(mlflow_server.uri)
    run = _only_run(client, "resume")  # one run, not two
    assert run.info.status == "FINISHED"
    history = _history(client, run.info.run_id, "train/loss")
    assert sorted({step for step, _ in history}) == [2, 4, 6, 8]  # step 6 from both attempts (the same value: exact resume)
    assert history[-1] == (8, pytest.approx(logged(resumed, "loss")[-1][1]))


def test_a_nested_run_and_checkpoint_artifacts(tmp_path, mlflow_server):
    client = MlflowClient(mlflow_server.uri)
    experiment_id = client.create_experiment("nested")
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    args = _args(tmp_path / "out", mlflow_server, mlflow_experiment="nested", mlflow_parent_run_id=parent,
                 mlflow_log_artifacts="checkpoint", save_strategy="steps", save_steps=4, eval_strategy="no")
    trainer = demo_trainer(args)
    trainer.train()
    trainer.end_run()
    (child,) = [r for r in client.search_runs([experiment_id]) if r.info.run_id != parent]
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert [a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")] == [
        "checkpoints/checkpoint-4", "checkpoints/checkpoint-8"]
    files = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(child.info.run_id, "checkpoints/checkpoint-8")}
    assert {"model.safetensors", "manifest.json"} <= files


def test_treadle_train_uploads_the_model_and_terminates_the_run_once_after_its_evaluation(tmp_path, run_treadle, mlflow_server):
    result = run_treadle("train", "--output_dir", tmp_path / "run", "--max_steps", "4", "--logging_steps", "2",
                         "--eval_strategy", "no", "--do_eval", "true", "--disable_tqdm", "true", "--report_to", "mlflow",
                         "--mlflow_tracking_uri", mlflow_server.uri, "--mlflow_experiment", "cli",
                         "--mlflow_log_artifacts", "end", "--per_device_eval_batch_size", "500")
    assert result.returncode == 0, result.stderr
    client = MlflowClient(mlflow_server.uri)
    run = _only_run(client, "cli")
    assert run.info.status == "FINISHED"
    assert [step for step, _ in _history(client, run.info.run_id, "eval/loss")] == [4]
    model = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/model.safetensors" in model and "model/metrics.jsonl" not in model


def test_an_unreachable_tracking_server_is_a_clear_error_within_seconds(tmp_path, run_treadle):
    uri = f"http://127.0.0.1:{free_port()}"
    args = demo_args(tmp_path / "out", "mlflow", plugin_options={"mlflow_tracking_uri": uri})
    trainer = demo_trainer(args)
    start = time.monotonic()
    with pytest.raises(UsageError, match="mlflow: cannot reach the tracking server http://127.0.0.1:"):
        trainer.train()
    assert time.monotonic() - start < 10

    result = run_treadle("train", "--output_dir", tmp_path / "run", "--max_steps", "2", "--report_to", "mlflow",
                         env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 2
    assert "mlflow: cannot reach the tracking server" in result.stderr and "Traceback" not in result.stderr


class _KillServerAt:
    """Stops the tracking server (SIGKILL, no goodbye) at the end of ``step``."""

    def __init__(self, server: MlflowServer, step: int) -> None:
        self.server, self.step = server, step

    @hookimpl
    def treadle_on_step_end(self, state):
        if state.global_step == self.step:
            import signal

            self.server.stop(signal.SIGKILL)


def test_a_server_that_dies_mid_training_is_one_warning_and_training_goes_on(tmp_path, caplog):
    server = MlflowServer(tmp_path / "dying-server").start()
    try:
        args = _args(tmp_path / "out", server, mlflow_experiment="dies", max_steps=8, eval_strategy="no")
        trainer = demo_trainer(args, [_KillServerAt(server, 4)])
        with caplog.at_level(logging.WARNING, logger="treadle"):
            result = trainer.train()
            trainer.end_run()
    finally:
        server.stop()
    assert result.global_step == 8
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "mlflow" in r.getMessage()]
    assert len([w for w in warnings if "logging failed" in w]) == 1, warnings
    # what reached the server before it died is in its store
    client = MlflowClient(server.store_uri)
    run = _only_run(client, "dies")
    assert [step for step, _ in _history(client, run.info.run_id, "train/loss")] == [2]  # step 4's log came after the kill
    assert run.info.status == "RUNNING"  # nobody left to tell; the end of the run was a warning too
