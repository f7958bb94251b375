"""Optuna as treadle's search backend.

treadle runs each trial (arguments copied with the trial's values, a fresh model, its own output
folder) and reports the objective after each evaluation; optuna samples the values, decides
pruning through its pruner, and keeps the study. With ``storage`` (``sqlite:///search.db`` or any
RDB URL) the study is loaded if it exists, so a search that was killed continues: finished trials
count towards ``n_trials`` and are not run again, and a trial the crash left "running" is marked
failed before the search goes on.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from treadle.components import SearchBackend
from treadle.errors import UsageError
from treadle.search import BestRun, Param, SearchTrial

logger = logging.getLogger("treadle.optuna")

STUDY_OPTIONS = ("storage", "study_name", "sampler", "pruner", "load_if_exists")
OPTIMIZE_OPTIONS = ("timeout", "n_jobs", "gc_after_trial", "callbacks", "catch", "show_progress_bar")
DEFAULT_STUDY_NAME = "treadle-search"


def default_hp_space(trial: optuna.Trial) -> dict[str, Any]:
    """The space searched when none is given (the same ranges transformers' optuna default uses)."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-6, 1e-4, log=True),
        "num_train_epochs": trial.suggest_int("num_train_epochs", 1, 5),
        "seed": trial.suggest_int("seed", 1, 40),
        "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [4, 8, 16, 32, 64]),
    }


def space_from_params(params: list[Param]) -> Callable[[optuna.Trial], dict[str, Any]]:
    """A search space file's dimensions as optuna ``suggest_*`` calls."""

    def suggest(trial: optuna.Trial) -> dict[str, Any]:
        values = {}
        for p in params:
            if p.type == "categorical":
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.type == "int":
                values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
        return values

    return suggest


class OptunaBackend(SearchBackend):
    name = "optuna"

    def run(self, objective, *, n_trials, directions, hp_space, hp_name, **kwargs) -> list[BestRun]:
        study_options = {k: kwargs.pop(k) for k in STUDY_OPTIONS if k in kwargs}
        optimize_options = {k: kwargs.pop(k) for k in OPTIMIZE_OPTIONS if k in kwargs}
        if kwargs:
            raise UsageError(
                f"hyperparameter_search: optuna does not take {', '.join(sorted(kwargs))}; its options are "
                f"{', '.join(STUDY_OPTIONS + OPTIMIZE_OPTIONS)}"
            )
        study = self._study(directions, study_options)
        finished = self._recover(study)
        single = len(directions) == 1
        space = self._space(hp_space)

        def run_trial(native: optuna.Trial) -> Any:
            values = space(native)
            trial = SearchTrial(
                number=native.number, params=dict(values), native=native,
                name=hp_name(native) if hp_name is not None else str(native.number),
                reporter=_pruning_reporter(native) if single else None,
            )
            outcome = objective(trial)
            if outcome.pruned:
                raise optuna.TrialPruned(f"pruned at {trial.intermediate[-1] if trial.intermediate else 'start'}")
            return outcome.objectives[0] if single else outcome.objectives

        remaining = n_trials - finished
        if finished:
            logger.info("study %r already has %d finished trial(s); running %d more", study.study_name, finished, max(remaining, 0))
        if remaining > 0:
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # treadle logs each trial itself
            study.optimize(run_trial, n_trials=remaining, **optimize_options)
        return _best_runs(study, single)

    def _study(self, directions: list[str], options: dict[str, Any]) -> optuna.Study:
        if options.get("storage"):
            options.setdefault("load_if_exists", True)
            options.setdefault("study_name", DEFAULT_STUDY_NAME)
        options.setdefault("sampler", optuna.samplers.TPESampler(seed=self.args.seed))  # reproducible searches
        where = {"direction": directions[0]} if len(directions) == 1 else {"directions": directions}
        try:
            return optuna.create_study(**where, **options)
        except (ValueError, ImportError, optuna.exceptions.OptunaError) as exc:
            raise UsageError(f"optuna could not open the study ({type(exc).__name__}: {exc}); check --storage / --study_name "
                             "(a stored study keeps the directions it was created with)") from None
        except Exception as exc:  # sqlalchemy errors for an unreachable or malformed database URL
            raise UsageError(f"optuna could not open storage {options.get('storage')!r}: {type(exc).__name__}: {exc}") from None

    @staticmethod
    def _recover(study: optuna.Study) -> int:
        """Mark trials an interrupted search left running as failed; count the finished ones."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            logger.warning("trial %d was left running by an interrupted search; marking it failed", trial.number)
            study.tell(trial.number, state=TrialState.FAIL)
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    @staticmethod
    def _space(hp_space: Any) -> Callable[[optuna.Trial], dict[str, Any]]:
        if hp_space is None:
            return default_hp_space
        if isinstance(hp_space, (list, tuple)) and all(isinstance(p, Param) for p in hp_space):
            return space_from_params(list(hp_space))
        if callable(hp_space):
            return hp_space
        raise UsageError(f"hp_space must be a function of an optuna trial or a search space file, got {type(hp_space).__name__}")


def _pruning_reporter(native: optuna.Trial) -> Callable[[float, int], bool]:
    def report(value: float, step: int) -> bool:
        native.report(value, step)
        return native.should_prune()

    return report


def _best_runs(study: optuna.Study, single: bool) -> list[BestRun]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    best = [study.best_trial] if single else study.best_trials
    return [BestRun(str(t.number), t.value if single else list(t.values), dict(t.params), run_summary=study) for t in best]

