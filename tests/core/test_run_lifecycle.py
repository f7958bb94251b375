"""A run is opened once and closed once: ``run_end`` after its last metrics, ``exception`` when it fails.

The strategy (and with it the backend) is torn down either way. Driven through real Trainers,
a reporter selected by path (``lifecycle_kit``) and the ``treadle`` command.
"""

from __future__ import annotations

import logging
import sys
import textwrap

import pytest
from lifecycle_kit import FAIL_LOGS_ENV, CountingStrategy, read_events
from trainer_kit import Classifier, make_args, make_data
from treadle.callbacks import TrainerCallback
from treadle.markers import hookimpl
from treadle.trainer import Trainer

REPORTER = "lifecycle_kit:RecordingReporter"


def _args(tmp_path, **overrides):
    values = dict(max_steps=4, logging_strategy="steps", logging_steps=2, report_to=REPORTER,
                  strategy="lifecycle_kit:CountingStrategy")
    values.update(overrides)
    return make_args(tmp_path, **values)


def _trainer(tmp_path, callbacks=(), **overrides):
    CountingStrategy.calls = []
    return Trainer(Classifier(), _args(tmp_path, **overrides), train_dataset=make_data(64), eval_dataset=make_data(16),
                   callbacks=list(callbacks))


def _kinds(events):
    return [event[0] for event in events]


class _RaiseAtStep:
    def __init__(self, step, exc=RuntimeError):
        self.step, self.exc = step, exc

    @hookimpl
    def treadle_on_step_end(self, state):
        if state.global_step == self.step:
            raise self.exc("step went wrong")


def test_train_then_evaluate_from_python_is_one_run_ended_by_end_run(tmp_path):
    trainer = _trainer(tmp_path)
    out = tmp_path / "out"
    trainer.train()
    assert "finish" not in _kinds(read_events(out))  # train_end is not the end of the run
    trainer.evaluate()
    trainer.end_run()
    events = read_events(out)
    assert _kinds(events) == ["setup", "log", "log", "log", "log", "finish"]
    assert "eval_loss" in events[-2][2]  # the evaluation after training went to the same run
    assert CountingStrategy.calls == ["setup_environment", "teardown"]
    trainer.end_run()  # a second end does nothing
    assert _kinds(read_events(out)).count("finish") == 1
    assert CountingStrategy.calls == ["setup_environment", "teardown"]


def test_a_with_block_ends_the_run_and_a_later_train_opens_a_new_one(tmp_path):
    with _trainer(tmp_path) as trainer:
        trainer.train()
    first = read_events(tmp_path / "out")
    assert _kinds(first)[-1] == "finish" and _kinds(first).count("setup") == 1
    trainer.train()  # sets the torn-down environment up again
    trainer.end_run()
    events = read_events(tmp_path / "out")
    assert _kinds(events).count("setup") == 2 and _kinds(events).count("finish") == 2
    assert CountingStrategy.calls == ["setup_environment", "teardown", "setup_environment", "teardown"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_training_that_raises_marks_the_run_failed_and_still_tears_down(tmp_path, exc):
    seen = []

    class OnException(TrainerCallback):
        def on_exception(self, args, state, control, exception=None, **kwargs):
            seen.append((type(exception), state.global_step))

    trainer = _trainer(tmp_path, callbacks=[_RaiseAtStep(3, exc), OnException()])
    with pytest.raises(exc, match="step went wrong"):
        trainer.train()
    events = read_events(tmp_path / "out")
    assert _kinds(events) == ["setup", "log", "fail"] and events[-1][1] == exc.__name__
    assert seen == [(exc, 3)]
    assert CountingStrategy.calls == ["setup_environment", "teardown"]
    trainer.end_run()  # the failed run is over: nothing is finished after it failed
    assert _kinds(read_events(tmp_path / "out"))[-1] == "fail"
    assert CountingStrategy.calls == ["setup_environment", "teardown"]


def test_a_closing_hook_that_raises_is_a_warning_and_the_others_still_close(tmp_path, caplog):
    class BrokenCloser:
        @hookimpl
        def treadle_on_run_end(self):
            raise OSError("disk full")

        @hookimpl
        def treadle_on_exception(self):
            raise OSError("disk full")

    trainer = _trainer(tmp_path, callbacks=[BrokenCloser()])
    trainer.train()
    with caplog.at_level(logging.WARNING, logger="treadle"):
        trainer.end_run()
    assert _kinds(read_events(tmp_path / "out"))[-1] == "finish"
    assert any("run_end of callback:BrokenCloser" in r.getMessage() and "disk full" in r.getMessage() for r in caplog.records)

    failing = _trainer(tmp_path / "second", callbacks=[BrokenCloser(), _RaiseAtStep(2)])
    with pytest.raises(RuntimeError, match="step went wrong"):  # the run's own exception, not the closer's
        failing.train()
    assert _kinds(read_events(tmp_path / "second" / "out"))[-1] == "fail"


def test_a_reporter_failing_mid_run_is_one_warning_and_training_goes_on(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv(FAIL_LOGS_ENV, "1")
    trainer = _trainer(tmp_path, max_steps=8)
    with caplog.at_level(logging.WARNING, logger="treadle"):
        result = trainer.train()
    trainer.end_run()
    assert result.global_step == 8
    warnings = [r.getMessage() for r in caplog.records if "reporter recording: logging failed" in r.getMessage()]
    assert len(warnings) == 1 and "ConnectionError: tracking server went away" in warnings[0]
    assert _kinds(read_events(tmp_path / "out")) == ["setup", "finish"]


def test_a_resumed_run_gets_the_reporter_state_back_before_it_opens(tmp_path):
    first = _trainer(tmp_path, save_strategy="steps", save_steps=2)
    first.train()
    first.end_run()
    run_id = read_events(tmp_path / "out")[0][1]
    resumed = _trainer(tmp_path, save_strategy="steps", save_steps=2, max_steps=6)
    resumed.train(resume_from_checkpoint=True)
    resumed.end_run()
    setups = [event for event in read_events(tmp_path / "out") if event[0] == "setup"]
    assert setups == [["setup", run_id], ["setup", run_id]]


def test_a_run_left_open_is_ended_at_interpreter_exit(tmp_path, run_treadle):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from trainer_kit import Classifier, make_args, make_data
        from treadle.trainer import Trainer
        args = make_args(__import__("pathlib").Path({str(tmp_path)!r}), max_steps=2, logging_strategy="steps",
                         logging_steps=1, report_to={REPORTER!r})
        trainer = Trainer(Classifier(), args, train_dataset=make_data(32), eval_dataset=make_data(16))
        trainer.train()
        trainer.evaluate()
        """
    ))
    import subprocess

    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert _kinds(read_events(tmp_path / "out")) == ["setup", "log", "log", "log", "log", "finish"]


def _cli_args(tmp_path, *extra):
    kit = __import__("pathlib").Path(__file__).parent / "lifecycle_kit.py"
    return ["train", "--output_dir", tmp_path / "run", "--max_steps", "6", "--logging_steps", "2",
            "--eval_strategy", "steps", "--eval_steps", "3", "--disable_tqdm", "true",
            "--report_to", f"{kit}:RecordingReporter", *extra]


def test_treadle_train_finishes_the_run_after_its_final_evaluation(tmp_path, run_treadle):
    result = run_treadle(*_cli_args(tmp_path, "--do_eval", "true"))
    assert result.returncode == 0, result.stderr
    events = read_events(tmp_path / "run")
    assert _kinds(events).count("setup") == 1 and _kinds(events)[-1] == "finish"
    assert _kinds(events).count("finish") == 1


def test_treadle_train_that_breaks_marks_the_run_failed(tmp_path, run_treadle):
    kit = __import__("pathlib").Path(__file__).parent / "lifecycle_kit.py"
    result = run_treadle(*_cli_args(tmp_path, "--task", f"{kit}:failing_task", "--per_device_train_batch_size", "8"))
    assert result.returncode != 0
    events = read_events(tmp_path / "run")
    assert _kinds(events)[0] == "setup" and events[-1] == ["fail", "RuntimeError"]
