"""Loop behaviour a script ported from transformers' Trainer relies on (transformers 5 as the reference)."""

from __future__ import annotations

import pytest
import torch
from trainer_kit import Classifier, Recorder, identical_weights, make_args, make_data, weights
from treadle import Trainer
from treadle.markers import hookimpl


class RateProbe:
    """The learning rate each optimizer step runs with (read just before ``optimizer.step``)."""

    def __init__(self) -> None:
        self.used: list[float] = []

    @hookimpl
    def treadle_on_pre_optimizer_step(self, trainer):
        self.used.append(trainer.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant_with_warmup", "polynomial"])
def test_the_logged_learning_rate_is_the_one_its_step_used(tmp_path, schedule):
    args = make_args(tmp_path, lr_scheduler_type=schedule, learning_rate=0.1, max_steps=6, warmup_steps=2,
                     logging_strategy="steps", logging_steps=1)
    probe = RateProbe()
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64), callbacks=[probe])
    trainer.train()
    logged = [h["learning_rate"] for h in trainer.state.log_history if "loss" in h]
    assert logged == pytest.approx(probe.used) and len(logged) == 6
    assert logged[0] == 0.0  # warmup starts at zero
    if schedule == "linear":
        assert logged[-1] > 0.0 and trainer.get_learning_rates()[0] == 0.0  # the last step still had a rate


def test_steps_evaluation_also_runs_at_the_last_step(tmp_path):
    args = make_args(tmp_path, max_steps=7, eval_strategy="steps", eval_steps=3, logging_strategy="steps",
                     logging_steps=3, save_strategy="steps", save_steps=3)
    recorder = Recorder()
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64), eval_dataset=make_data(16), callbacks=[recorder])
    trainer.train()
    assert [step for name, step in recorder.events if name == "evaluate"] == [3, 6, 7]
    # at the last step (no logging step): step_end, the evaluation's metrics logged, evaluate, save; as transformers does
    last = [name for name, step in recorder.events if step == 7 and name not in ("step_begin", "pre_optimizer_step", "optimizer_step")]
    assert last[:4] == ["step_end", "log", "evaluate", "save"]
    assert "eval_loss" in recorder.logs[-2] and recorder.saved[-1].endswith("checkpoint-7")
    assert recorder.metrics[-1]["eval_loss"] > 0


def test_steps_evaluation_is_not_repeated_when_the_last_step_is_an_eval_step(tmp_path):
    args = make_args(tmp_path, max_steps=6, eval_strategy="steps", eval_steps=3)
    recorder = Recorder()
    Trainer(Classifier(), args, train_dataset=make_data(64), eval_dataset=make_data(16), callbacks=[recorder]).train()
    assert [step for name, step in recorder.events if name == "evaluate"] == [3, 6]


def test_a_reduce_lr_on_plateau_passed_in_steps_on_the_metric(tmp_path):
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5)
    args = make_args(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=1)
    trainer = Trainer(model, args, train_dataset=make_data(64), eval_dataset=make_data(16), optimizers=(optimizer, plateau))
    trainer.train()  # used to fail: step() missing 1 required positional argument: 'metrics'
    assert trainer.get_learning_rates()[0] == pytest.approx(1e-6 * 0.5**3)  # flat loss: every evaluation but the first halves it


def _accuracy(prediction, compute_result=False):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def test_predict_with_batch_eval_metrics_returns_predictions_and_labels(tmp_path):
    def per_batch(prediction, compute_result=False):
        logits, labels = prediction.predictions, prediction.label_ids
        return {"accuracy": float((logits.argmax(-1) == labels).float().mean())}

    args = make_args(tmp_path, batch_eval_metrics=True, per_device_eval_batch_size=8)
    trainer = Trainer(Classifier(), args, compute_metrics=per_batch)
    output = trainer.predict(make_data(20))
    assert output.predictions.shape == (20, 3) and output.label_ids.shape == (20,)
    assert "test_accuracy" in output.metrics


class EpochProbe:
    def __init__(self) -> None:
        self.at_begin: list[float] = []
        self.at_end: list[float] = []

    @hookimpl
    def treadle_on_epoch_begin(self, state):
        self.at_begin.append(state.epoch)

    @hookimpl
    def treadle_on_epoch_end(self, state):
        self.at_end.append(state.epoch)


def test_state_epoch_is_the_start_value_in_every_epoch_begin(tmp_path):
    probe = EpochProbe()
    args = make_args(tmp_path, num_train_epochs=3)
    Trainer(Classifier(), args, train_dataset=make_data(32), callbacks=[probe]).train()
    assert probe.at_begin == [0.0, 1.0, 2.0] and probe.at_end == [1.0, 2.0, 3.0]


def test_resuming_a_finished_max_steps_run_trains_no_step(tmp_path):
    # 8 batches an epoch, 6 steps: the checkpoint sits inside the first epoch
    args = make_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
    first = Trainer(Classifier(), args, train_dataset=make_data(64))
    first.train()
    trained = weights(first.model)

    recorder = Recorder()
    again = Trainer(Classifier(seed=1), args, train_dataset=make_data(64), callbacks=[recorder])
    output = again.train(resume_from_checkpoint=True)
    assert output.global_step == 6 and again.state.global_step == 6
    assert "step_begin" not in recorder.names()
    assert not (tmp_path / "out" / "checkpoint-7").exists()
    assert identical_weights(weights(again.model), trained)
