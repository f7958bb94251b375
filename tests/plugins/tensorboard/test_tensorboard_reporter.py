"""treadle-tensorboard: event files written by real runs, read back with TensorBoard's own reader."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from reporter_kit import RaiseAtStep, demo_args, demo_trainer, logged
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

KIT_DIR = Path(__file__).resolve().parent.parent


def _run_dirs(output_dir: Path) -> list[Path]:
    return sorted(path.parent for path in (output_dir / "runs").rglob("events.out.tfevents.*"))


def _read(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_every_metric_at_its_step_plus_the_arguments_as_text_and_hparams(tmp_path):
    args = demo_args(tmp_path / "out", "tensorboard", hub_token="hf_secret_token", run_name="tb-check")
    trainer = demo_trainer(args)
    trainer.train()
    trainer.end_run()
    (log_dir,) = set(_run_dirs(tmp_path / "out"))
    assert log_dir.parent == tmp_path / "out" / "runs"  # the seeds' default: output_dir/runs/<date>_<host>
    events = _read(log_dir)

    for key, tag in (("loss", "train/loss"), ("learning_rate", "train/learning_rate"), ("grad_norm", "train/grad_norm"),
                     ("eval_loss", "eval/loss"), ("eval_accuracy", "eval/accuracy")):
        expected = logged(trainer, key)
        assert [step for step, _ in _scalars(events, tag)] == [step for step, _ in expected], tag
        assert [value for _, value in _scalars(events, tag)] == pytest.approx([value for _, value in expected], rel=1e-6)
    assert [step for step, _ in _scalars(events, "train/loss")] == [2, 4, 6, 8]
    assert [step for step, _ in _scalars(events, "eval/loss")] == [4, 8]

    text = events.Tensors("args/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"run_name": "tb-check"' in text and '"max_steps": 8' in text
    assert "hf_secret_token" not in text and '"hub_token": "***"' in text
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["learning_rate"].number_value == pytest.approx(2e-3)
    assert start.hparams["hub_token"].string_value == "***"


def test_each_log_is_on_disk_before_a_crash(tmp_path):
    """The process dies (no finish, no exit handlers) right after the second log: both logs are readable."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(KIT_DIR)!r})
        os.environ["TREADLE_PLUGINS"] = "tensorboard"
        from reporter_kit import demo_args, demo_trainer
        from treadle.markers import hookimpl

        class DieAfterTwoLogs:
            seen = 0
            @hookimpl(trylast=True)  # after the reporter wrote this log
            def treadle_on_log(self, logs):
                if "loss" in logs:
                    type(self).seen += 1
                    if self.seen == 2:
                        os._exit(3)

        trainer = demo_trainer(demo_args({str(tmp_path / "out")!r}, "tensorboard", eval_strategy="no"), [DieAfterTwoLogs()])
        trainer.train()
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TREADLE_DISABLE_PLUGIN_AUTOLOAD"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 3, result.stderr
    (log_dir,) = set(_run_dirs(tmp_path / "out"))
    assert [step for step, _ in _scalars(_read(log_dir), "train/loss")] == [2, 4]


def test_a_resumed_run_writes_on_in_the_same_directory_without_a_doubled_stretch(tmp_path):
    out = tmp_path / "out"
    first = demo_trainer(demo_args(out, "tensorboard", max_steps=8, logging_steps=1, eval_strategy="no",
                                   save_strategy="steps", save_steps=4), [RaiseAtStep(6)])
    with pytest.raises(RuntimeError, match="broken at step 6"):
        first.train()  # steps 5 and 6 were logged after the last checkpoint (step 4)
    resumed = demo_trainer(demo_args(out, "tensorboard", max_steps=8, logging_steps=1, eval_strategy="no",
                                     save_strategy="steps", save_steps=4))
    resumed.train(resume_from_checkpoint=True)
    resumed.end_run()

    (log_dir,) = set(_run_dirs(out))  # one run directory, two event files
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2
    curve = _scalars(_read(log_dir), "train/loss")
    assert [step for step, _ in curve] == list(range(1, 9))  # the interrupted 5 and 6 are purged
    resumed_part = [value for step, value in logged(resumed, "loss") if step > 4]
    assert [value for step, value in curve if step > 4] == pytest.approx(resumed_part, rel=1e-6)


def test_an_explicit_logging_dir_is_used(tmp_path):
    args = demo_args(tmp_path / "out", "tensorboard", logging_dir=str(tmp_path / "tb"), max_steps=2, eval_strategy="no")
    trainer = demo_trainer(args)
    trainer.train()
    trainer.end_run()
    assert [step for step, _ in _scalars(_read(tmp_path / "tb"), "train/loss")] == [2]
    assert not (tmp_path / "out" / "runs").exists()
