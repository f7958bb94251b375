"""A resumed run logs the same losses and the same ``train_loss`` as the run that never stopped."""

from __future__ import annotations

import torch
from resume_task import NUM_SAMPLES, Net, Samples, build

from treadle import verify_resume as vr
from treadle.args import TrainingArguments
from treadle.trainer import Trainer


def _args(output_dir, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir), max_steps=17, per_device_train_batch_size=8, learning_rate=1e-2,
        lr_scheduler_type="cosine", seed=3, report_to=["none"], disable_tqdm=True, logging_steps=5,
        save_strategy="steps", save_steps=7,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def _train(output_dir, callbacks=(), resume=None, **overrides) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(model=Net(), args=_args(output_dir, **overrides), train_dataset=Samples(NUM_SAMPLES),
                      callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _logged_losses(trainer: Trainer) -> list[tuple[int, float]]:
    return [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]


def test_logged_losses_and_train_loss_survive_a_stop_between_two_logs(tmp_path):
    straight = _train(tmp_path / "straight")
    _train(tmp_path / "resumed", callbacks=[vr.StopAt(7)])  # saves checkpoint-7, two steps after the log at 5
    resumed = _train(tmp_path / "resumed", resume=str(tmp_path / "resumed" / "checkpoint-7"))

    assert [step for step, _ in _logged_losses(straight)] == [5, 10, 15]
    assert _logged_losses(resumed) == _logged_losses(straight)
    assert resumed.state.log_history[-1]["train_loss"] == straight.state.log_history[-1]["train_loss"]


def test_verify_resume_compares_the_logged_losses(tmp_path, monkeypatch):
    args = _args(tmp_path / "unused", save_strategy="no")
    assert vr.verify_resume(args, 7, task=build, workdir=tmp_path / "kept").identical

    # A resume that forgets the loss window: every step still agrees, the logs do not.
    monkeypatch.setattr("treadle.metrics.LossWindowState.treadle_load_checkpoint_state",
                        lambda self, trainer, states: None)
    report = vr.verify_resume(args, 7, task=build, workdir=tmp_path / "lost")
    assert (report.step, report.quantity) == (10, "logged loss"), str(report)
