"""The Trainer's constructor arguments and public methods, and overriding its steps."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from trainer_kit import CLASSES, IN, Classifier, make_args, make_data, same_weights, weights
from treadle.errors import UsageError
from treadle.trainer import Trainer


def test_optimizers_given_to_the_constructor_are_used(tmp_path):
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    trainer = Trainer(model, make_args(tmp_path, max_steps=2), train_dataset=make_data(32), optimizers=(optimizer, scheduler))
    trainer.train()
    assert trainer.optimizer is optimizer and trainer.lr_scheduler is scheduler
    assert trainer.get_learning_rates() == [0.15]


def test_optimizer_cls_and_kwargs_replace_optim(tmp_path):
    args = make_args(tmp_path, max_steps=2, weight_decay=0.1)
    trainer = Trainer(Classifier(), args, train_dataset=make_data(32), optimizer_cls_and_kwargs=(torch.optim.Adagrad, {"lr": 0.01}))
    trainer.train()
    assert isinstance(trainer.optimizer, torch.optim.Adagrad)
    with pytest.raises(UsageError, match="not both"):
        model = Classifier()
        Trainer(model, args, optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None),
                optimizer_cls_and_kwargs=(torch.optim.Adagrad, {}))


def test_weight_decay_skips_biases_and_norm_layers(tmp_path):
    trainer = Trainer(Classifier(), make_args(tmp_path, weight_decay=0.1))
    assert trainer.get_decay_parameter_names(trainer.model) == ["hidden.weight", "out.weight"]
    groups = trainer.create_optimizer().param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in groups] == [2, 4]


def test_compute_loss_func_gets_outputs_labels_and_the_item_count(tmp_path):
    seen = []

    def summed_loss(outputs, labels, num_items_in_batch=None):
        seen.append(num_items_in_batch)
        return F.cross_entropy(outputs["logits"], labels, reduction="sum") / num_items_in_batch

    args = make_args(tmp_path, max_steps=2, gradient_accumulation_steps=2)
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64), compute_loss_func=summed_loss)
    trainer.train()
    assert [int(n) for n in seen] == [16] * 4  # 2 steps x 2 micro-batches, 16 items per step
    seen.clear()
    assert "eval_loss" in trainer.evaluate(make_data(20))
    assert [int(n) for n in seen] == [16, 4]  # in evaluation, each batch's own count


def test_model_init_builds_a_fresh_model_for_each_training(tmp_path):
    built = []

    def init():
        built.append(Classifier())
        return built[-1]

    trainer = Trainer(model_init=init, args=make_args(tmp_path, max_steps=1), train_dataset=make_data(16))
    trainer.train()
    trainer.train()
    assert len(built) == 3 and trainer.model is built[-1]
    with pytest.raises(UsageError, match="model_init"):
        Trainer(args=make_args(tmp_path))


class WeightedLoss(Trainer):
    """The seeds' example of a subclass: a class-weighted loss (old signature, no num_items_in_batch)."""

    def compute_loss(self, model, inputs, return_outputs=False):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0]))(outputs["logits"], labels)
        return (loss, outputs) if return_outputs else loss


def test_a_subclass_may_override_compute_loss(tmp_path):
    data = make_data(64)
    custom = WeightedLoss(Classifier(), make_args(tmp_path, max_steps=4, gradient_accumulation_steps=2), train_dataset=data)
    custom.train()
    plain = Trainer(Classifier(), make_args(tmp_path, max_steps=4, gradient_accumulation_steps=2), train_dataset=data)
    plain.train()
    assert not same_weights(weights(custom.model), weights(plain.model), atol=1e-6)


def test_a_subclass_may_override_training_step(tmp_path):
    class Counting(Trainer):
        calls = 0

        def training_step(self, model, inputs):
            type(self).calls += 1
            return super().training_step(model, inputs)

    Counting(Classifier(), make_args(tmp_path, max_steps=3), train_dataset=make_data(64)).train()
    assert Counting.calls == 3


def test_saving_the_model_state_and_metrics(tmp_path, capsys):
    trainer = Trainer(Classifier(), make_args(tmp_path, max_steps=2), train_dataset=make_data(32))
    out = trainer.train()
    trainer.save_model()
    trainer.save_state()
    trainer.save_metrics("train", out.metrics)
    trainer.save_metrics("eval", {"eval_loss": 0.5})
    trainer.log_metrics("train", out.metrics)
    directory = tmp_path / "out"
    assert (directory / "model.safetensors").is_file()
    assert json.loads((directory / "trainer_state.json").read_text())["global_step"] == 2
    assert json.loads((directory / "all_results.json").read_text()).keys() >= {"train_loss", "eval_loss"}
    printed = capsys.readouterr().out
    assert "***** train metrics *****" in printed and "train_runtime" in printed


class Counted(Classifier):
    def floating_point_ops(self, inputs):
        return 6 * sum(p.numel() for p in self.parameters()) * inputs["x"].shape[0]


def test_counting_helpers(tmp_path):
    args = make_args(tmp_path, max_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=4)
    trainer = Trainer(Counted(), args, train_dataset=make_data(64))
    assert trainer.get_total_train_batch_size() == 8
    assert trainer.get_num_trainable_parameters() == sum(p.numel() for p in trainer.model.parameters())
    trainer.train()
    assert trainer.state.total_flos == 3 * 2 * trainer.model.floating_point_ops({"x": torch.zeros(4, IN)})
    assert trainer.num_examples(trainer.train_dataloader) == 64
    tokens = [{"input_ids": torch.ones(5, dtype=torch.long)}] * 8
    assert trainer.num_tokens(torch.utils.data.DataLoader(tokens, batch_size=2), max_steps=1) == 20
    assert trainer.is_world_process_zero() and trainer.is_local_process_zero()


def test_an_iterable_dataset_needs_max_steps(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            x, y = make_data(20).tensors
            return iter(zip(x, y))

    with pytest.raises(UsageError, match="max_steps"):
        Trainer(Classifier(), make_args(tmp_path), train_dataset=Stream()).train()
    trainer = Trainer(Classifier(), make_args(tmp_path, max_steps=5), train_dataset=Stream())
    trainer.train()
    assert trainer.state.global_step == 5  # the stream is read again when it runs out
    assert trainer.predict(Stream()).predictions.shape == (20, CLASSES)


def test_load_best_model_at_end_restores_the_best_checkpoint(tmp_path):
    # "best" is the highest loss here, so the best checkpoint is an early one, not the last.
    args = make_args(tmp_path, max_steps=5, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                     metric_for_best_model="loss", greater_is_better=True, load_best_model_at_end=True)
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64), eval_dataset=make_data(32))
    trainer.train()
    evals = [(h["eval_loss"], h["step"]) for h in trainer.state.log_history if "eval_loss" in h]
    best_step = max(evals)[1]
    assert best_step < 5
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")
    from treadle.checkpoint.model_files import read_weights

    saved = read_weights(tmp_path / "out" / f"checkpoint-{best_step}" / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())


def test_trainer_state_round_trips_through_json(tmp_path):
    from treadle.state import TrainerState

    trainer = Trainer(Classifier(), make_args(tmp_path, max_steps=3, logging_strategy="steps", logging_steps=1),
                      train_dataset=make_data(32))
    trainer.train()
    trainer.state.save_to_json(tmp_path / "state.json")
    loaded = TrainerState.load_from_json(tmp_path / "state.json")
    assert loaded == trainer.state and loaded.to_dict()["global_step"] == 3
    assert loaded.log_history[0]["step"] == 1
