"""treadle-optuna: a real optuna study drives real (tiny) trainings.

A search of 6 trials tells the good learning rate from the hopeless one; a pruner stops a bad
trial at its first evaluation; a search killed with SIGKILL continues from its sqlite storage
without running its finished trials again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from search_task import Rows, model_init

from treadle import Trainer, TrainingArguments
from treadle.search import BestRun

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.usefixtures("installed_plugins")


def _args(tmp_path, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(tmp_path / "search"), per_device_train_batch_size=32, num_train_epochs=3, seed=0,
                  report_to="none", disable_tqdm=True, save_strategy="no", eval_strategy="epoch", logging_steps=100)
    values.update(overrides)
    return TrainingArguments(**values)


def _trainer(tmp_path, **overrides) -> Trainer:
    return Trainer(model_init=model_init, args=_args(tmp_path, **overrides), train_dataset=Rows(256, 0),
                   eval_dataset=Rows(128, 1))


def test_a_six_trial_search_finds_the_better_learning_rate(tmp_path):
    trainer = _trainer(tmp_path)
    best = trainer.hyperparameter_search(
        hp_space=lambda trial: {"learning_rate": trial.suggest_categorical("learning_rate", [1e-7, 3e-2])},
        n_trials=6, direction="minimize", backend="optuna",
    )
    assert isinstance(best, BestRun)
    assert best.hyperparameters == {"learning_rate": 3e-2}
    tried = {r["params"]["learning_rate"] for r in trainer.search_results}
    assert tried == {1e-7, 3e-2}  # both were tried, and the good one won on the eval loss
    losses = {r["params"]["learning_rate"]: r["objectives"][0] for r in trainer.search_results}
    assert losses[3e-2] < losses[1e-7]
    assert len(trainer.search_results) == 6
    for r in trainer.search_results:  # each trial in its own folder, with its own final eval
        assert Path(r["output_dir"]).name == f"run-{r['trial']}"


def test_maximize_with_a_custom_objective(tmp_path):
    trainer = _trainer(tmp_path, num_train_epochs=1)
    best = trainer.hyperparameter_search(
        hp_space=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-1, log=True)},
        compute_objective=lambda metrics: -metrics["eval_loss"], n_trials=3, direction="maximize",
    )
    assert best.objective == max(r["objectives"][0] for r in trainer.search_results)


def test_pruning_stops_a_bad_trial_before_its_last_epoch(tmp_path):
    trainer = _trainer(tmp_path, num_train_epochs=4)
    # a threshold no hopeless trial meets after one epoch; the good one passes it
    pruner = optuna.pruners.ThresholdPruner(upper=1.0)
    trainer.hyperparameter_search(
        hp_space=lambda trial: {"learning_rate": trial.suggest_categorical("learning_rate", [1e-7, 3e-2])},
        n_trials=4, backend="optuna", pruner=pruner, sampler=optuna.samplers.BruteForceSampler(seed=0),
    )
    states = {r["params"]["learning_rate"]: r["state"] for r in trainer.search_results}
    assert states == {1e-7: "pruned", 3e-2: "complete"}
    steps_per_epoch = 256 // 32
    steps = {r["params"]["learning_rate"]: r["global_step"] for r in trainer.search_results}
    assert steps == {1e-7: steps_per_epoch, 3e-2: 4 * steps_per_epoch}  # stopped at its first evaluation


def test_search_needs_model_init(tmp_path):
    from treadle.errors import UsageError
    from search_task import Net

    trainer = Trainer(model=Net(), args=_args(tmp_path), train_dataset=Rows(64, 0), eval_dataset=Rows(32, 1))
    with pytest.raises(UsageError, match="model_init"):
        trainer.hyperparameter_search(n_trials=1)


def _search(tmp_path, *extra, env=None):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n"
                     "per_device_train_batch_size: [16, 32]\n")
    command = [sys.executable, "-m", "treadle", "search", "--task", "search_task:build", "--output_dir", str(tmp_path / "out"),
               "--hp_space", str(space), "--n_trials", "4", "--storage", f"sqlite:///{tmp_path / 'study.db'}",
               "--num_train_epochs", "1", "--eval_strategy", "epoch", "--save_strategy", "no", "--disable_tqdm", "true",
               "--report_to", "none", *extra]
    full_env = {**os.environ, "PYTHONPATH": str(HERE), **(env or {})}
    full_env.pop("TREADLE_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=300, cwd=tmp_path)


def test_a_killed_search_continues_from_its_storage(tmp_path):
    killed = _search(tmp_path, env={"SEARCH_TASK_KILL_AT": "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    study = optuna.load_study(study_name="treadle-search", storage=f"sqlite:///{tmp_path / 'study.db'}")
    done = {t.number: t.params for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert sorted(done) == [0, 1]

    resumed = _search(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    study = optuna.load_study(study_name="treadle-search", storage=f"sqlite:///{tmp_path / 'study.db'}")
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4  # n_trials finished trials in all, the two from before kept as they were
    assert {t.number: t.params for t in complete if t.number in done} == done
    assert [t.state for t in trials if t.number == 2] == [TrialState.FAIL]  # the one the kill interrupted
    assert "was left running by an interrupted search" in resumed.stderr
    summary = json.loads((tmp_path / "out" / "search_results.json").read_text())
    assert [r["trial"] for r in summary["trials"]] == ["3", "4"]  # only the new ones ran in this process
    assert "best trial" in resumed.stdout and "objective" in resumed.stdout


def test_a_bad_search_space_is_one_clear_error(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rat: {type: float, low: 1, high: 2}\nseed: {type: int, low: 5, high: 1}\n")
    result = subprocess.run(
        [sys.executable, "-m", "treadle", "search", "--hp_space", str(space), "--n_trials", "2"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "TREADLE_DISABLE_PLUGIN_AUTOLOAD"},
    )
    assert result.returncode == 2
    assert "learning_rat: not a training argument" in result.stderr
    assert "seed: needs numbers low < high" in result.stderr
    assert "Traceback" not in result.stderr
