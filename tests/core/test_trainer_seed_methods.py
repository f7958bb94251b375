"""The seeds' smaller Trainer methods (treadle.trainer_api), each with its documented meaning."""

from __future__ import annotations

import contextlib

import pytest
import torch
from trainer_kit import Classifier, make_data

from treadle import Trainer, TrainingArguments
from treadle.errors import UsageError


def _trainer(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, per_device_train_batch_size=8, max_steps=4)
    values.update(overrides)
    torch.manual_seed(0)
    return Trainer(model=Classifier(), args=TrainingArguments(**values), train_dataset=make_data(64), eval_dataset=make_data(16))


def test_context_managers_are_the_precisions_and_an_override_is_used_by_the_loop(tmp_path):
    trainer = _trainer(tmp_path)
    with trainer.autocast_smart_context_manager(), trainer.compute_loss_context_manager():
        pass
    entered = []

    class Counting(Trainer):
        def compute_loss_context_manager(self):
            entered.append(1)
            return contextlib.nullcontext()

    args = TrainingArguments(str(tmp_path / "c"), report_to="none", disable_tqdm=True, max_steps=3, per_device_train_batch_size=8)
    Counting(model=Classifier(), args=args, train_dataset=make_data(64)).train()
    assert len(entered) == 3  # once per micro-batch, as transformers' training_step does


def test_get_batch_samples_counts_items(tmp_path):
    trainer = _trainer(tmp_path)
    batches, items = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 3)
    assert len(batches) == 3 and int(items) == 24  # 3 batches of 8 labels
    assert trainer.get_batch_samples(iter([]), 2) == ([], None)


def test_get_optimizer_group(tmp_path):
    trainer = _trainer(tmp_path)
    with pytest.raises(UsageError, match="no optimizer yet"):
        trainer.get_optimizer_group()
    trainer.create_optimizer()
    bias = trainer.model.hidden.bias
    assert trainer.get_optimizer_group(bias)["weight_decay"] == 0.0
    assert sum(len(g) for g in trainer.get_optimizer_group()) == len(list(trainer.model.parameters()))


def test_metrics_format_and_set_initial_training_values(tmp_path):
    trainer = _trainer(tmp_path, max_steps=-1, num_train_epochs=2)
    assert trainer.metrics_format({"train_runtime": 3725.5, "eval_loss": 0.123456})["train_runtime"] == "1:02:05.50"
    values = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader(), 8)
    assert values == (2, 8, 64, 128, True, 8, 16)


def test_parallel_sizes_are_one_without_a_sharding_strategy(tmp_path):
    trainer = _trainer(tmp_path)
    assert (trainer.get_tp_size(), trainer.get_cp_size(), trainer.get_sp_size()) == (1, 1, 1)


def test_strategy_and_hub_only_methods_are_clear_errors_without_them(tmp_path):
    trainer = _trainer(tmp_path)
    with pytest.raises(UsageError, match="--deepspeed"):
        trainer.propagate_args_to_deepspeed()
    with pytest.raises(UsageError, match="--push_to_hub"):
        trainer.init_hf_repo()
    with pytest.raises(UsageError, match="--push_to_hub"):
        trainer.init_git_repo()


def test_legacy_prediction_loop_is_used_when_asked(tmp_path):
    calls = []

    class Legacy(Trainer):
        def prediction_loop(self, *args, **kwargs):
            calls.append(args[1])
            return super().prediction_loop(*args, **kwargs)

    args = TrainingArguments(str(tmp_path), report_to="none", disable_tqdm=True, use_legacy_prediction_loop=True)
    trainer = Legacy(model=Classifier(), args=args, eval_dataset=make_data(16))
    metrics = trainer.evaluate()
    trainer.predict(make_data(8))
    assert calls == ["Evaluation", "Prediction"] and "eval_loss" in metrics


def test_create_model_card_writes_a_readme(tmp_path):
    trainer = _trainer(tmp_path, learning_rate=3e-3)
    trainer.train()
    trainer.evaluate()
    path = trainer.create_model_card(language="en", license="apache-2.0", tags=["demo"], finetuned_from="base/model")
    text = open(path).read()
    assert text.startswith("---\nlibrary_name: \"treadle\"")
    assert 'license: "apache-2.0"' in text and 'base_model: "base/model"' in text and 'tags: ["demo"]' in text
    assert "| eval_loss |" in text and "| learning_rate | `0.003` |" in text
