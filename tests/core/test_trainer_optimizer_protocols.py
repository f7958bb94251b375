"""Optimizers that bring their own parameters, update during backward, or switch train/eval modes."""

from __future__ import annotations

import pytest
import torch
from optimizer_standins import FusedSGD, ModalSGD
from trainer_kit import Classifier, identical_weights, make_args, make_data, weights
from treadle.errors import UsageError
from treadle.markers import hookimpl
from treadle.trainer import Trainer


def test_a_factory_may_pass_its_own_parameter_groups(tmp_path):
    model = Classifier()
    before = weights(model)
    trainer = Trainer(model, make_args(tmp_path, optim="optimizer_standins:output_layer_only", max_steps=3),
                      train_dataset=make_data(64))
    trainer.train()
    after = weights(trainer.model)
    trained = {name for name in before if not torch.equal(before[name], after[name])}
    assert trained == {"out.weight", "out.bias"}


def test_params_in_optimizer_cls_and_kwargs_is_used_and_the_dict_left_alone(tmp_path):
    model = Classifier()
    kwargs = {"params": list(model.out.parameters()), "lr": 0.1}
    trainer = Trainer(model, make_args(tmp_path, max_steps=2), train_dataset=make_data(64),
                      optimizer_cls_and_kwargs=(torch.optim.SGD, kwargs))
    trainer.train()
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == 2
    assert "params" in kwargs  # a second train() builds the same optimizer again


def test_a_fused_backward_optimizer_replaces_backward_and_step(tmp_path):
    common = {"max_steps": 6, "lr_scheduler_type": "linear", "max_grad_norm": 0.0, "weight_decay": 0.0}
    reference = Trainer(Classifier(), make_args(tmp_path, optim="sgd", **common), train_dataset=make_data(64))
    reference.train()
    trainer = Trainer(Classifier(), make_args(tmp_path, optim="optimizer_standins:fused_sgd", **common),
                      train_dataset=make_data(64))
    trainer.train()  # FusedSGD has no step(): calling it would raise NotImplementedError
    optimizer = trainer.optimizer
    assert isinstance(optimizer, FusedSGD) and optimizer.model is trainer.model
    assert len(optimizer.learning_rates) == 6 and optimizer.learning_rates == sorted(optimizer.learning_rates, reverse=True)
    assert identical_weights(weights(reference.model), weights(trainer.model))


def test_a_fused_backward_optimizer_cannot_accumulate(tmp_path):
    args = make_args(tmp_path, optim="optimizer_standins:fused_sgd", max_steps=2, gradient_accumulation_steps=2)
    with pytest.raises(UsageError, match="gradient_accumulation_steps 1"):
        Trainer(Classifier(), args, train_dataset=make_data(64)).train()


class ModeWatcher:
    def __init__(self) -> None:
        self.training, self.evaluating = set(), set()

    @hookimpl
    def treadle_on_step_begin(self, trainer) -> None:
        self.training.add(trainer.optimizer.mode)

    @hookimpl
    def treadle_on_prediction_step(self, trainer) -> None:
        self.evaluating.add(trainer.optimizer.mode)


def test_train_and_eval_modes_of_schedule_free_optimizers(tmp_path):
    watcher = ModeWatcher()
    args = make_args(tmp_path, optim="optimizer_standins:modal_sgd", max_steps=4, eval_strategy="steps", eval_steps=2)
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64), eval_dataset=make_data(32, seed=1),
                      callbacks=[watcher])
    trainer.train()  # ModalSGD refuses to step unless train() was called
    assert isinstance(trainer.optimizer, ModalSGD)
    assert watcher.training == {"train"} and watcher.evaluating == {"eval"}
    assert trainer.optimizer.mode == "eval"  # after training, the weights to save and evaluate
