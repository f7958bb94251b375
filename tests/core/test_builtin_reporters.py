"""The console and jsonl reporters, driven through a run's hook caller as the loop drives them."""

import json
import logging
import math
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from treadle.args import TrainingArguments
from treadle.builtin.reporters import CONSOLE_LOGGER, ConsoleReporter, JsonlReporter
from treadle.plugins import RunHooks, get_plugin_manager


def _state(**fields):
    """The TrainerState fields a reporter reads."""
    return SimpleNamespace(**{"global_step": 0, "max_steps": 10, "epoch": 0.0, "is_world_process_zero": True, **fields})


class _Run:
    """A run's hook caller holding one reporter, with the keyword arguments the loop passes."""

    def __init__(self, reporter, args, state):
        self.hooks = RunHooks()
        self.hooks.register(reporter, name=reporter.name)
        self.args, self.state = args, state

    def __call__(self, event, **extra):
        self.hooks.call(f"treadle_on_{event}", trainer=None, args=self.args, state=self.state, control=None, **extra)

    def steps(self, count):
        for _ in range(count):
            self.state.global_step += 1
            self("step_end")


def _reporter(name, args):
    return get_plugin_manager().resolve("reporter", name).load()(args)


def _console_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == CONSOLE_LOGGER]


# ---------------------------------------------------------------------------------------------
# console
# ---------------------------------------------------------------------------------------------


def test_console_bar_follows_steps_and_lines_carry_metrics(tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="treadle")
    args = TrainingArguments(str(tmp_path))
    reporter = _reporter("console", args)
    run = _Run(reporter, args, _state())
    run("train_begin")
    run.steps(5)
    run("log", logs={"loss": 0.123456, "learning_rate": 2e-3, "epoch": 0.5})
    assert reporter._train_bar.n == 5
    run.steps(5)
    run("train_end")

    assert _console_lines(caplog) == ["step 5/10  loss 0.1235  learning_rate 0.002  epoch 0.5"]
    assert reporter._train_bar is None
    assert "10/10" in capsys.readouterr().err
    reporter.finish()  # a second finish is harmless


def test_console_resumed_bar_starts_at_the_restored_step(tmp_path):
    args = TrainingArguments(str(tmp_path))
    reporter = ConsoleReporter(args)
    run = _Run(reporter, args, _state(global_step=6))
    run("train_begin")
    assert reporter._train_bar.n == 6
    run.steps(1)
    assert reporter._train_bar.n == 7
    run("train_end")


def test_console_without_tqdm_keeps_the_lines(tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="treadle")
    args = TrainingArguments(str(tmp_path), disable_tqdm=True)
    reporter = ConsoleReporter(args)
    run = _Run(reporter, args, _state())
    run("train_begin")
    run.steps(3)
    run("prediction_step", num_batches=4)
    run("log", logs={"eval_loss": 0.5})
    run("evaluate", metrics={"eval_loss": 0.5})
    run("train_end")
    assert reporter._train_bar is None and reporter._eval_bar is None
    assert _console_lines(caplog) == ["step 3/10  eval_loss 0.5"]
    assert "it/s" not in capsys.readouterr().err


def test_console_lines_show_by_default_whatever_level_treadle_logs_at(tmp_path, caplog):
    """``passive``: the Trainer may pin the ``treadle`` logger at WARNING; the metrics still show."""
    caplog.set_level(logging.DEBUG)
    treadle_logger = logging.getLogger("treadle")
    before = treadle_logger.level
    treadle_logger.setLevel(logging.WARNING)
    try:
        args = TrainingArguments(str(tmp_path), disable_tqdm=True)
        reporter = ConsoleReporter(args)
        run = _Run(reporter, args, _state(global_step=3))
        run("log", logs={"eval_samples_per_second": 92759.31, "learning_rate": 8.3071e-05})
        reporter.finish()
    finally:
        treadle_logger.setLevel(before)
    assert _console_lines(caplog) == ["step 3/10  eval_samples_per_second 92759  learning_rate 8.307e-05"]


class _Unprintable:
    def __str__(self):
        raise AssertionError("formatted although nothing shows it")


def test_console_honours_log_level_and_formats_nothing_it_hides(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    args = TrainingArguments(str(tmp_path), log_level="warning", disable_tqdm=True)
    reporter = ConsoleReporter(args)
    run = _Run(reporter, args, _state())
    run("train_begin")
    run("log", logs={"loss": _Unprintable()})
    run("train_end")
    assert _console_lines(caplog) == []


def test_console_restores_the_logger_level_it_changed(tmp_path):
    logger = logging.getLogger(CONSOLE_LOGGER)
    before = logger.level
    args = TrainingArguments(str(tmp_path), log_level="error")
    reporter = ConsoleReporter(args)
    run = _Run(reporter, args, _state())
    run("train_begin")
    assert logger.level == logging.ERROR
    run("train_end")
    assert logger.level == before


def test_console_eval_bar_opens_per_evaluation_with_its_total(tmp_path, capsys):
    args = TrainingArguments(str(tmp_path))
    reporter = ConsoleReporter(args)
    run = _Run(reporter, args, _state())
    for event, total in (("evaluate", 3), ("predict", None)):  # None: data without a length
        for _ in range(3):
            run("prediction_step", num_batches=total)
        assert (reporter._eval_bar.n, reporter._eval_bar.total) == (3, total)
        run(event, metrics={})
        assert reporter._eval_bar is None
    assert "eval: 100%" in capsys.readouterr().err


def test_console_is_silent_off_the_main_process(tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="treadle")
    args = TrainingArguments(str(tmp_path))
    reporter = ConsoleReporter(args)
    run = _Run(reporter, args, _state(is_world_process_zero=False))
    run("train_begin")
    run.steps(2)
    run("prediction_step", num_batches=4)
    run("log", logs={"loss": 1.0})
    run("train_end")
    assert _console_lines(caplog) == []
    assert capsys.readouterr().err == ""


def test_console_prints_its_lines_when_logging_is_unconfigured(tmp_path):
    """Outside pytest nothing handles log records: the reporter adds a handler of its own."""
    script = textwrap.dedent(
        f"""
        from types import SimpleNamespace
        from treadle.args import TrainingArguments
        from treadle.builtin.reporters import ConsoleReporter
        args = TrainingArguments({str(tmp_path)!r}, disable_tqdm=True)
        reporter = ConsoleReporter(args)
        state = SimpleNamespace(global_step=4, max_steps=8, epoch=1.0, is_world_process_zero=True)
        reporter.treadle_on_train_begin(trainer=None, args=args, state=state)
        reporter.treadle_on_log(trainer=None, args=args, state=state, logs={{"loss": 0.25}})
        reporter.treadle_on_train_end(state=state)
        reporter.treadle_on_log(trainer=None, args=args, state=state, logs={{"eval_accuracy": 0.9}})
        reporter.finish()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["step 4/8  loss 0.25", "step 4/8  eval_accuracy 0.9"]


# ---------------------------------------------------------------------------------------------
# jsonl
# ---------------------------------------------------------------------------------------------


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_writes_one_flushed_object_per_log(tmp_path):
    args = TrainingArguments(str(tmp_path / "out"))
    reporter = _reporter("jsonl", args)
    run = _Run(reporter, args, _state(global_step=50, epoch=0.25))
    run("train_begin")
    run("log", logs={"loss": 0.5, "learning_rate": 1e-3})
    path = tmp_path / "out" / "metrics.jsonl"
    assert _read_jsonl(path) == [{"step": 50, "epoch": 0.25, "loss": 0.5, "learning_rate": 1e-3}]  # before finish
    run.state.global_step = 100
    run("log", logs={"eval_loss": 0.4, "epoch": 0.5})
    run("train_end")
    reporter.finish()
    assert _read_jsonl(path)[1] == {"step": 100, "eval_loss": 0.4, "epoch": 0.5}


def test_jsonl_values_are_strict_json(tmp_path):
    args = TrainingArguments(str(tmp_path))
    reporter = JsonlReporter(args)
    run = _Run(reporter, args, _state())
    run("log", logs={"loss": math.nan, "grad_norm": math.inf, "tensor": torch.tensor(1.5), "tag": object()})
    reporter.finish()
    text = (tmp_path / "metrics.jsonl").read_text()
    record = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert record["loss"] == "nan" and record["grad_norm"] == "inf" and record["tensor"] == 1.5
    assert record["tag"].startswith("<object")


def test_jsonl_resume_appends_and_heals_a_cut_line(tmp_path):
    args = TrainingArguments(str(tmp_path))
    first = JsonlReporter(args)
    run = _Run(first, args, _state(global_step=10))
    run("train_begin")
    run("log", logs={"loss": 1.0})
    run("train_end")
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as handle:
        handle.write('{"step": 11, "lo')  # a crash in the middle of a line

    second = JsonlReporter(args)
    run = _Run(second, args, _state(global_step=10))
    run("train_begin")
    run("log", logs={"loss": 0.9})
    run("train_end")
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 10, "epoch": 0.0, "loss": 1.0}
    assert lines[1] == '{"step": 11, "lo'
    assert json.loads(lines[2]) == {"step": 10, "epoch": 0.0, "loss": 0.9}


def test_jsonl_writes_nothing_off_the_main_process(tmp_path):
    args = TrainingArguments(str(tmp_path / "out"))
    reporter = JsonlReporter(args)
    run = _Run(reporter, args, _state(is_world_process_zero=False))
    run("train_begin")
    run("log", logs={"loss": 1.0})
    run("train_end")
    reporter.finish()
    assert not (tmp_path / "out").exists()
