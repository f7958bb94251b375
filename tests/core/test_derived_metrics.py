"""Metrics derived from an evaluation's own (``treadle_derive_metrics``) are logged with them.

Perplexity from the loss is the usual case: it must be in the evaluation's log entry
(``state.log_history``, every reporter), in ``treadle_on_evaluate`` and in what ``evaluate``
returns, not added afterwards where the reporters never see it.
"""

from __future__ import annotations

import json
import math

import pytest
from trainer_kit import Classifier, Recorder, make_args, make_data

from treadle.errors import UsageError
from treadle.markers import hookimpl
from treadle.trainer import Trainer


class Perplexity:
    """The shape of a task's callback: ``<prefix>_perplexity`` from ``<prefix>_loss``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    @hookimpl
    def treadle_derive_metrics(self, metrics, metric_key_prefix):
        self.seen.append((metric_key_prefix, dict(metrics)))
        loss = metrics.get(f"{metric_key_prefix}_loss")
        return None if loss is None else {f"{metric_key_prefix}_perplexity": math.exp(loss)}


def test_a_derived_metric_is_in_the_log_entry_every_reporter_and_the_results(tmp_path):
    recorder, perplexity = Recorder(), Perplexity()
    args = make_args(tmp_path, report_to="jsonl", eval_strategy="epoch", logging_strategy="no")
    trainer = Trainer(Classifier(), args, train_dataset=make_data(32), eval_dataset=make_data(16),
                      callbacks=[perplexity, recorder])
    trainer.train()
    metrics = trainer.evaluate()
    trainer.end_run()

    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evaluations) == 2  # the epoch's evaluation and the one after training
    assert all(entry["eval_perplexity"] == pytest.approx(math.exp(entry["eval_loss"])) for entry in evaluations)
    assert [log["eval_perplexity"] for log in recorder.logs if "eval_loss" in log] == [e["eval_perplexity"] for e in evaluations]
    assert all("eval_perplexity" in m for m in recorder.metrics)  # treadle_on_evaluate sees it too
    written = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [line["eval_perplexity"] for line in written if "eval_loss" in line] == [e["eval_perplexity"] for e in evaluations]
    assert all("eval_runtime" in seen for _, seen in perplexity.seen)  # the hook gets the complete metrics


def test_each_set_of_a_dict_of_datasets_and_predict_get_their_prefix(tmp_path):
    perplexity = Perplexity()
    trainer = Trainer(Classifier(), make_args(tmp_path), callbacks=[perplexity])
    metrics = trainer.evaluate({"dev": make_data(16), "hard": make_data(16, seed=1)})
    assert {"eval_dev_perplexity", "eval_hard_perplexity"} <= set(metrics)
    assert trainer.predict(make_data(16)).metrics["test_perplexity"] > 1.0
    assert [prefix for prefix, _ in perplexity.seen] == ["eval_dev", "eval_hard", "test"]


def test_a_derived_metric_cannot_replace_a_measured_one(tmp_path):
    class Overwrites:
        @hookimpl
        def treadle_derive_metrics(self, metrics, metric_key_prefix):
            return {f"{metric_key_prefix}_loss": 0.0}

    trainer = Trainer(Classifier(), make_args(tmp_path), eval_dataset=make_data(16), callbacks=[Overwrites()])
    with pytest.raises(UsageError, match="'eval_loss', which this evaluation already has"):
        trainer.evaluate()


def test_the_metrics_a_hook_gets_are_read_only(tmp_path):
    class Mutates:
        @hookimpl
        def treadle_derive_metrics(self, metrics):
            metrics["eval_loss"] = 0.0

    trainer = Trainer(Classifier(), make_args(tmp_path), eval_dataset=make_data(16), callbacks=[Mutates()])
    with pytest.raises(TypeError):
        trainer.evaluate()
