"""The core side of hyperparameter search, without a search backend installed."""

from __future__ import annotations

import pytest
import torch
from trainer_kit import Classifier, make_data

from treadle import Trainer, TrainingArguments
from treadle.errors import UsageError
from treadle.search import (
    Param,
    SearchTrial,
    default_compute_objective,
    directions_of,
    load_search_space,
    summary_table,
)


def test_default_objective_is_the_loss_alone_else_the_sum_of_metrics():
    assert default_compute_objective({"eval_loss": 0.5, "epoch": 2.0, "eval_runtime": 1.0}) == 0.5
    assert default_compute_objective({"eval_loss": 0.5, "eval_accuracy": 0.75, "eval_f1": 0.5,
                                      "eval_samples_per_second": 99.0}) == 1.25
    with pytest.raises(UsageError, match="compute_objective"):
        default_compute_objective({"epoch": 1.0})


def test_search_space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}\n"
                    "num_train_epochs: {type: int, low: 1, high: 3}\nper_device_train_batch_size: [8, 16]\n")
    assert load_search_space(path) == [
        Param("learning_rate", "float", 1e-5, 1e-2, True),
        Param("num_train_epochs", "int", 1.0, 3.0),
        Param("per_device_train_batch_size", "categorical", choices=(8, 16)),
    ]
    json_path = tmp_path / "space.json"
    json_path.write_text('{"seed": [1, 2]}')
    assert load_search_space(json_path) == [Param("seed", "categorical", choices=(1, 2))]


@pytest.mark.parametrize("text, message", [
    ("lerning_rate: [1, 2]\n", "lerning_rate: not a training argument"),
    ("seed: {type: int, low: 3, high: 1}\n", "needs numbers low < high"),
    ("learning_rate: {type: float, low: 0, high: 1, log: true}\n", "log-scale range needs low > 0"),
    ("seed: {type: dice}\n", "type 'dice' is not one of"),
    ("seed: {type: int, low: 1, high: 2, lo: 3}\n", "unknown key(s) lo"),
    ("- just a list\n", "expected a mapping"),
    ("seed: [unclosed\n", "not valid YAML"),
])
def test_a_bad_search_space_names_the_problem(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_search_space(path)


def test_missing_search_space_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read it"):
        load_search_space(tmp_path / "nope.yaml")


def test_directions():
    assert directions_of("maximize") == ["maximize"]
    assert directions_of(["minimize", "maximize"]) == ["minimize", "maximize"]
    with pytest.raises(UsageError, match="'up' is not one of"):
        directions_of("up")


def test_without_a_backend_the_error_says_what_to_install(tmp_path):
    args = TrainingArguments(str(tmp_path), report_to="none", disable_tqdm=True)
    trainer = Trainer(model_init=Classifier, args=args, train_dataset=make_data(16), eval_dataset=make_data(8))
    with pytest.raises(UsageError, match=r"pip install \S*treadle-optuna"):
        trainer.hyperparameter_search(n_trials=2)


def test_a_trial_is_pruned_when_its_backend_says_so(tmp_path):
    """The Trainer reports after each evaluation; a True answer stops training (no backend needed)."""
    seen = []

    def reporter(value, step):
        seen.append((step, value))
        return step >= 4

    trial = SearchTrial(number=0, params={}, reporter=reporter)
    args = TrainingArguments(str(tmp_path), report_to="none", disable_tqdm=True, max_steps=20, eval_strategy="steps",
                             eval_steps=2, per_device_train_batch_size=8)
    torch.manual_seed(0)
    trainer = Trainer(model=Classifier(), args=args, train_dataset=make_data(64), eval_dataset=make_data(16))
    trainer.train(trial=trial)
    assert [step for step, _ in seen] == [2, 4]
    assert trial.pruned and trainer.state.global_step == 4
    assert trainer.state.trial_params == {}


def test_summary_table_marks_the_best():
    table = summary_table([
        {"trial": "0", "params": {"learning_rate": 0.1}, "objectives": [0.9], "state": "complete", "output_dir": "o/run-0"},
        {"trial": "1", "params": {"learning_rate": 0.01}, "objectives": [0.4], "state": "complete", "output_dir": "o/run-1"},
        {"trial": "2", "params": {"learning_rate": 1.0}, "objectives": [2.0], "state": "pruned", "output_dir": "o/run-2"},
    ], ["minimize"])
    lines = table.splitlines()
    assert lines[2].startswith("*") and "learning_rate=0.01" in lines[2]
    assert "pruned" in lines[3]
