"""Evaluation and prediction: metrics and their names, what compute_metrics receives, accumulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from trainer_kit import CLASSES, Classifier, Recorder, make_args, make_data
from treadle.evaluation import Accumulator, EvalPrediction
from treadle.markers import hookimpl
from treadle.trainer import Trainer


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def _per_sample_losses(model: Classifier, data) -> torch.Tensor:
    x, y = data.tensors
    with torch.no_grad():
        return F.cross_entropy(model.logits(x), y, reduction="none")


def test_evaluate_returns_prefixed_metrics_and_the_per_sample_mean_loss(tmp_path):
    data = make_data(40)  # batches of 16, 16, 8: a mean of batch means would be wrong
    trainer = Trainer(Classifier(), make_args(tmp_path), eval_dataset=data, compute_metrics=accuracy)
    metrics = trainer.evaluate()
    assert set(metrics) == {"eval_loss", "eval_accuracy", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
    assert metrics["eval_loss"] == pytest.approx(_per_sample_losses(trainer.model, data).mean().item(), rel=1e-5)
    assert set(trainer.evaluate(metric_key_prefix="dev")) == {k.replace("eval", "dev") for k in metrics}


def test_evaluate_during_training_adds_the_epoch(tmp_path):
    trainer = Trainer(Classifier(), make_args(tmp_path, eval_strategy="epoch"), train_dataset=make_data(32), eval_dataset=make_data(16))
    trainer.train()
    assert trainer.evaluate()["epoch"] == 1.0


def test_predict_returns_predictions_labels_and_test_metrics(tmp_path):
    data = make_data(40)
    recorder = Recorder()
    trainer = Trainer(Classifier(), make_args(tmp_path), compute_metrics=accuracy, callbacks=[recorder])
    out = trainer.predict(data)
    x, y = data.tensors
    assert out.predictions.shape == (40, CLASSES) and isinstance(out.predictions, np.ndarray)
    assert np.allclose(out.predictions, trainer.model.logits(x).detach().numpy(), atol=1e-6)
    assert (out.label_ids == y.numpy()).all()
    assert {"test_loss", "test_accuracy", "test_runtime"} <= set(out.metrics)
    assert "predict" in recorder.names()


def test_prediction_loss_only_skips_logits_and_metrics(tmp_path):
    calls = []
    trainer = Trainer(Classifier(), make_args(tmp_path, prediction_loss_only=True), compute_metrics=lambda p: calls.append(p) or {})
    out = trainer.predict(make_data(16))
    assert out.predictions is None and out.label_ids is None and calls == []
    assert "test_loss" in out.metrics


def test_without_compute_metrics_evaluate_keeps_no_predictions(tmp_path):
    trainer = Trainer(Classifier(), make_args(tmp_path), eval_dataset=make_data(16))
    assert set(trainer.evaluate()) == {"eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def test_include_for_metrics_passes_inputs_and_losses(tmp_path):
    data = make_data(24)
    seen = []
    trainer = Trainer(
        Classifier(), make_args(tmp_path, include_for_metrics=["inputs", "loss"]), compute_metrics=lambda p: seen.append(p) or {}
    )
    trainer.evaluate(data)
    (prediction,) = seen
    assert np.allclose(prediction.inputs, data.tensors[0].numpy())
    assert prediction.losses.shape == (24,)
    predictions, labels, inputs, losses = prediction  # unpacks like a tuple
    assert inputs is prediction.inputs


def test_batch_eval_metrics_calls_compute_metrics_per_batch(tmp_path):
    calls = []

    def per_batch(prediction, compute_result):
        calls.append((len(prediction.label_ids), compute_result))
        return {"batches": len(calls)} if compute_result else None

    trainer = Trainer(Classifier(), make_args(tmp_path, batch_eval_metrics=True), compute_metrics=per_batch)
    metrics = trainer.evaluate(make_data(40))
    assert calls == [(16, False), (16, False), (8, True)]
    assert metrics["eval_batches"] == 3


def test_eval_accumulation_steps_moves_predictions_to_the_host_as_it_goes():
    accumulator = Accumulator(offload_every=2)
    parts = [torch.full((2, 3), float(i)) for i in range(3)]
    accumulator.add(parts[0])
    assert len(accumulator.on_device) == 1
    accumulator.add(parts[1])
    assert accumulator.on_device == [] and len(accumulator.on_host) == 1
    accumulator.add(parts[2])
    assert np.array_equal(accumulator.result(), torch.cat(parts).numpy())


def test_eval_accumulation_steps_does_not_change_the_results(tmp_path):
    data = make_data(40)
    plain = Trainer(Classifier(), make_args(tmp_path)).predict(data)
    offloaded = Trainer(Classifier(), make_args(tmp_path, eval_accumulation_steps=1)).predict(data)
    assert np.array_equal(plain.predictions, offloaded.predictions)
    assert plain.metrics["test_loss"] == offloaded.metrics["test_loss"]


def test_eval_do_concat_batches_false_keeps_one_array_per_batch(tmp_path):
    out = Trainer(Classifier(), make_args(tmp_path, eval_do_concat_batches=False)).predict(make_data(40))
    assert [p.shape[0] for p in out.predictions] == [16, 16, 8]


def test_a_dict_of_eval_datasets_is_evaluated_set_by_set(tmp_path):
    trainer = Trainer(Classifier(), make_args(tmp_path), eval_dataset={"a": make_data(16), "b": make_data(16, seed=1)})
    metrics = trainer.evaluate()
    assert {"eval_a_loss", "eval_b_loss"} <= set(metrics)
    assert metrics["eval_a_loss"] != metrics["eval_b_loss"]
    assert "eval_b_loss" in trainer.evaluate(trainer.eval_dataset["b"], metric_key_prefix="eval_b")


class Tagger(nn.Module):
    """Per-position logits over a sequence whose length varies from batch to batch."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, CLASSES)

    def forward(self, input_ids, labels=None):
        logits = self.embed(input_ids)
        if labels is None:
            return {"logits": logits}
        return {"loss": F.cross_entropy(logits.reshape(-1, CLASSES), labels.reshape(-1), ignore_index=-100), "logits": logits}


def test_predictions_of_different_lengths_are_padded_with_minus_100(tmp_path):
    rows = [{"input_ids": [1] * (2 if i < 16 else 5), "labels": [0] * (2 if i < 16 else 5)} for i in range(20)]
    from treadle.data import DataCollatorWithPadding

    out = Trainer(Tagger(), make_args(tmp_path), data_collator=DataCollatorWithPadding()).predict(rows)
    assert out.predictions.shape == (20, 5, CLASSES)
    assert (out.predictions[:16, 2:] == -100).all() and (out.predictions[16:] != -100).all()
    assert (out.label_ids[:16, 2:] == -100).all()


def test_preprocess_logits_for_metrics_runs_per_batch_before_accumulation(tmp_path):
    shapes = []

    def to_classes(logits, labels):
        shapes.append(tuple(logits.shape))
        return logits.argmax(-1)

    trainer = Trainer(Classifier(), make_args(tmp_path), preprocess_logits_for_metrics=to_classes,
                      compute_metrics=lambda p: {"correct": float((p.predictions == p.label_ids).mean())})
    out = trainer.predict(make_data(40))
    assert shapes == [(16, CLASSES), (16, CLASSES), (8, CLASSES)]
    assert out.predictions.shape == (40,) and "test_correct" in out.metrics


class BatchCounts:
    def __init__(self) -> None:
        self.seen: list = []

    @hookimpl
    def treadle_on_prediction_step(self, num_batches) -> None:
        self.seen.append(num_batches)


def test_prediction_steps_say_how_many_batches_there_are(tmp_path):
    counts = BatchCounts()
    trainer = Trainer(Classifier(), make_args(tmp_path, per_device_eval_batch_size=16), callbacks=[counts])
    trainer.evaluate(make_data(40))
    assert counts.seen == [3, 3, 3]
