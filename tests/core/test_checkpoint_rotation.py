"""save_total_limit rotation, and which checkpoint is the best one."""

from __future__ import annotations

import pytest
import torch
from checkpoint_standin import StandinTrainer
from treadle.checkpoint import list_checkpoints, load_best_model, save_checkpoint, update_best_metric
from treadle.checkpoint.model_files import read_weights
from treadle.errors import UsageError


def _save_with_metrics(trainer, metrics_per_step):
    """Save one checkpoint per entry; each entry is this step's eval metrics (or None)."""
    for metrics in metrics_per_step:
        trainer.train_steps(1)
        save_checkpoint(trainer, metrics)


def _steps(output_dir):
    return [int(p.name.split("-")[1]) for p in list_checkpoints(output_dir)]


def test_limit_keeps_the_newest(tmp_path):
    trainer = StandinTrainer(tmp_path, save_total_limit=2)
    _save_with_metrics(trainer, [None] * 5)
    assert _steps(tmp_path) == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-5"]


def test_no_limit_keeps_everything(tmp_path):
    trainer = StandinTrainer(tmp_path, save_total_limit=None)
    _save_with_metrics(trainer, [None] * 3)
    assert _steps(tmp_path) == [1, 2, 3]


def test_best_is_never_deleted_and_counts_towards_the_limit(tmp_path):
    trainer = StandinTrainer(tmp_path, save_total_limit=3, metric_for_best_model="accuracy", greater_is_better=True)
    _save_with_metrics(trainer, [{"eval_accuracy": a} for a in (0.5, 0.9, 0.6, 0.7, 0.8, 0.4)])
    assert _steps(tmp_path) == [2, 5, 6]  # the best (step 2) and the two newest
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")
    assert trainer.state.best_metric == 0.9 and trainer.state.best_global_step == 2


def test_limit_one_with_best_keeps_best_and_newest(tmp_path):
    trainer = StandinTrainer(tmp_path, save_total_limit=1, metric_for_best_model="loss", load_best_model_at_end=True)
    _save_with_metrics(trainer, [{"eval_loss": v} for v in (0.5, 0.2, 0.3, 0.4)])
    assert _steps(tmp_path) == [2, 4]
    _save_with_metrics(trainer, [{"eval_loss": 0.1}])  # the newest becomes the best: only it remains
    assert _steps(tmp_path) == [5]


def test_best_metric_direction_and_prefix():
    class State:
        global_step = 1
        best_metric = None
        best_global_step = None

    class Args:
        metric_for_best_model = "loss"
        greater_is_better = None

    state, args = State(), Args()
    assert update_best_metric(args, state, {"eval_loss": 1.0})
    state.global_step = 2
    assert not update_best_metric(args, state, {"eval_loss": 2.0})  # loss: lower is better by default
    assert update_best_metric(args, state, {"eval_loss": 0.5}) and state.best_global_step == 2
    assert not update_best_metric(args, state, {"eval_loss": 0.5})  # a second call is harmless
    assert not update_best_metric(args, state, {"eval_loss": float("nan")})
    args.metric_for_best_model, args.greater_is_better = "eval_f1", None
    state.best_metric = None
    assert update_best_metric(args, state, {"eval_f1": 0.1})
    assert update_best_metric(args, state, {"eval_f1": 0.2})  # not a loss: greater is better
    assert not update_best_metric(args, state, None)


def test_unknown_metric_is_a_usage_error(tmp_path):
    trainer = StandinTrainer(tmp_path, metric_for_best_model="accuracy")
    trainer.train_steps(1)
    with pytest.raises(UsageError, match=r"no 'eval_accuracy' \(it returned: eval_loss\)"):
        save_checkpoint(trainer, {"eval_loss": 1.0})


def test_load_best_model(tmp_path):
    trainer = StandinTrainer(tmp_path, metric_for_best_model="loss")
    trainer.train_steps(1)
    save_checkpoint(trainer, {"eval_loss": 0.1})
    best_weights = trainer.weights()
    trainer.train_steps(2)
    save_checkpoint(trainer, {"eval_loss": 0.3})
    assert not torch.equal(trainer.weights()["hidden.weight"], best_weights["hidden.weight"])
    assert load_best_model(trainer)
    assert all(torch.equal(v, best_weights[k]) for k, v in trainer.weights().items())


def test_load_best_model_without_a_best_warns(tmp_path, caplog):
    trainer = StandinTrainer(tmp_path)
    assert not load_best_model(trainer)
    assert "no best checkpoint" in caplog.text


def _train_with_evals(output_dir, **overrides):
    from resume_task import Net, Samples
    from treadle.args import TrainingArguments
    from treadle.trainer import Trainer

    values = dict(output_dir=str(output_dir), max_steps=12, per_device_train_batch_size=8, learning_rate=0.05,
                  seed=3, report_to=["none"], disable_tqdm=True, eval_strategy="steps", eval_steps=2,
                  metric_for_best_model="loss")
    values.update(overrides)
    torch.manual_seed(0)
    trainer = Trainer(model=Net(), args=TrainingArguments(**values), train_dataset=Samples(100), eval_dataset=Samples(24))
    trainer.train()
    return trainer


def _eval_losses(trainer):
    return {entry["step"]: entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry}


def test_save_strategy_best_saves_exactly_the_improvements(tmp_path):
    trainer = _train_with_evals(tmp_path, save_strategy="best")
    losses, best, improved = _eval_losses(trainer), float("inf"), []
    for step, loss in sorted(losses.items()):
        if loss < best:
            best, improved = loss, improved + [step]
    assert _steps(tmp_path) == improved and len(improved) < len(losses)
    assert trainer.state.best_model_checkpoint == str(tmp_path / f"checkpoint-{improved[-1]}")
    assert trainer.state.best_metric == best


def test_load_best_model_at_end_with_limit_one(tmp_path):
    trainer = _train_with_evals(tmp_path, save_strategy="steps", save_steps=2, save_total_limit=1,
                                load_best_model_at_end=True, learning_rate=0.5)
    losses = _eval_losses(trainer)
    best_step = min(losses, key=losses.get)
    assert best_step != 12, losses  # so that the limit of 1 has two checkpoints to keep
    expected = {best_step, 12}
    assert set(_steps(tmp_path)) == expected, losses
    best = read_weights(tmp_path / f"checkpoint-{best_step}" / "model.safetensors")
    assert all(torch.equal(v, best[k]) for k, v in trainer.model.state_dict().items())
