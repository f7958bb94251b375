"""Hyperparameter search: ``Trainer.hyperparameter_search`` and ``treadle search``.

The core owns what every search library shares: the search space given as data (a YAML/JSON
file from the shell), the trial (arguments copied with the trial's values, a fresh model from
``model_init``, its own ``output_dir/run-<trial>``), the objective (``compute_objective`` of the
evaluation metrics), intermediate reports for pruning, and the ``BestRun`` answer. A *search
backend* plugin (``treadle_register_search_backends``; optuna in ``treadle-optuna``) owns the
rest: sampling, pruning decisions, storage. It subclasses ``treadle.components.SearchBackend``
and calls the ``objective`` it is given once per trial with a ``SearchTrial``.

No torch at import: the shell imports this to read a search space.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from treadle.errors import UsageError

logger = logging.getLogger("treadle.search")

DIRECTIONS = ("minimize", "maximize")
_SPEED_SUFFIXES = ("_runtime", "_per_second", "_samples_per_second", "_steps_per_second")


@dataclass
class BestRun:
    """The best trial of a search (the seeds' ``trainer_utils.BestRun``)."""

    run_id: str
    objective: Union[float, list[float]]
    hyperparameters: dict[str, Any]
    run_summary: Optional[Any] = None


def default_compute_objective(metrics: dict[str, float]) -> float:
    """The evaluation loss when it is the only metric; otherwise the sum of the other metrics.

    Speed figures and ``epoch`` are not metrics of the model, so they never count.
    """
    metrics = {k: v for k, v in metrics.items() if k != "epoch" and not k.endswith(_SPEED_SUFFIXES)}
    loss = metrics.pop("eval_loss", None)
    if not metrics:
        if loss is None:
            raise UsageError("the evaluation returned no eval_loss and no metric to optimise; pass compute_objective")
        return float(loss)
    return float(sum(float(v) for v in metrics.values()))


# ------------------------------------------------------------------------------ search space


@dataclass(frozen=True)
class Param:
    """One dimension of a search space: ``float`` / ``int`` in ``[low, high]`` (``log`` scale,
    ``step``), or ``categorical`` over ``choices``."""

    name: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple = ()


def load_search_space(source: Union[str, os.PathLike, dict]) -> list[Param]:
    """Read a search space file (YAML or JSON) or mapping, checked against the argument schema.

    Each key is a training argument; its value is ``{type: float|int, low, high, log?, step?}``,
    ``{type: categorical, choices: [...]}`` or a plain list (categorical)::

        learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
        per_device_train_batch_size: [8, 16, 32]
    """
    if not isinstance(source, dict):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--hp_space {path}: cannot read it ({exc.strerror or exc})") from None
        try:
            if path.suffix.lower() == ".json":
                source = json.loads(text)
            else:
                import yaml

                source = yaml.safe_load(text)
        except ValueError as exc:  # json.JSONDecodeError and yaml.YAMLError both derive from it or Exception
            raise UsageError(f"--hp_space {path}: not valid {path.suffix.lstrip('.') or 'YAML'} ({exc})") from None
        except Exception as exc:
            raise UsageError(f"--hp_space {path}: not valid YAML ({exc})") from None
        if not isinstance(source, dict) or not source:
            raise UsageError(f"--hp_space {path}: expected a mapping of argument names to ranges, got {type(source).__name__}")
    from treadle.config import core_fields

    known = set(core_fields())
    params, problems = [], []
    for name, spec in source.items():
        if name not in known:
            problems.append(f"{name}: not a training argument")
            continue
        try:
            params.append(_param(name, spec))
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise UsageError("the search space has problems:\n  " + "\n  ".join(problems))
    return params


def _param(name: str, spec: Any) -> Param:
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"expected a list of choices or a mapping with type/low/high, got {spec!r}")
    kind = str(spec.get("type", "float"))
    unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))} (use type, low, high, log, step, choices)")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError("a categorical parameter needs a non-empty list of choices")
        return Param(name, kind, choices=tuple(choices))
    if kind not in ("float", "int"):
        raise ValueError(f"type {kind!r} is not one of float, int, categorical")
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise ValueError(f"needs numbers low < high, got low={low!r}, high={high!r}")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ValueError("a log-scale range needs low > 0")
    return Param(name, kind, float(low), float(high), log, spec.get("step"))


# ------------------------------------------------------------------------------ one trial


@dataclass
class SearchTrial:
    """What a trial's run sees: its number, name and values, and a way to report progress.

    ``native`` is the backend's own trial object (an ``optuna.Trial``); attributes the core does
    not define are looked up there, so a ``model_init(trial)`` written for transformers (which
    gets the backend's trial) keeps working. ``report(value, step)`` returns True when the
    backend wants this trial stopped early (pruned).
    """

    number: int
    params: dict[str, Any]
    native: Any = None
    name: Optional[str] = None
    reporter: Optional[Callable[[float, int], bool]] = None
    compute_objective: Callable[[dict[str, float]], Any] = default_compute_objective
    pruned: bool = False
    intermediate: list[tuple[int, float]] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        native = self.__dict__.get("native")
        if native is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(native, name)

    def report_metrics(self, metrics: dict[str, float], step: int) -> bool:
        """Called by the Trainer after each evaluation during training; True: stop the trial."""
        if self.reporter is None:
            return False
        value = self.compute_objective(metrics)
        if isinstance(value, (list, tuple)):  # several objectives: backends do not prune those
            return False
        self.intermediate.append((step, float(value)))
        if self.reporter(float(value), step):
            self.pruned = True
        return self.pruned


@dataclass
class TrialOutcome:
    """What the core tells the backend after a trial ran."""

    objectives: list[float]
    metrics: dict[str, float]
    pruned: bool
    output_dir: str


class TrialRunner:
    """Runs one trial for a backend: the arguments with the trial's values, a fresh Trainer."""

    def __init__(self, trainer: Any, compute_objective: Callable, n_objectives: int) -> None:
        self.trainer = trainer
        self.base_args = trainer.args
        self.compute_objective = compute_objective
        self.n_objectives = n_objectives
        self.results: list[dict[str, Any]] = []

    def __call__(self, trial: SearchTrial) -> TrialOutcome:
        trial.compute_objective = self.compute_objective
        name = trial.name or str(trial.number)
        output_dir = os.path.join(self.base_args.output_dir, f"run-{name}")
        unknown = [k for k in trial.params if not hasattr(self.base_args, k)]
        if unknown:
            raise UsageError(f"the search space names {', '.join(unknown)}, which are not training arguments")
        args = self.base_args.replace(**trial.params, output_dir=output_dir)
        trainer = self.trainer.for_trial(args)
        trainer.train(trial=trial)
        metrics = {} if trial.pruned else trainer.evaluate()
        if trial.pruned:
            value = trial.intermediate[-1][1] if trial.intermediate else math.nan
            objectives = [value]
        else:
            value = self.compute_objective(metrics)
            objectives = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
        if len(objectives) != self.n_objectives:
            raise UsageError(f"compute_objective returned {len(objectives)} value(s) for {self.n_objectives} direction(s)")
        self.results.append({"trial": name, "params": dict(trial.params), "objectives": objectives,
                             "state": "pruned" if trial.pruned else "complete", "global_step": trainer.state.global_step,
                             "output_dir": output_dir})
        end_run = getattr(trainer, "end_run", None)
        if end_run is not None:  # each trial is a run of its own for the reporters
            end_run()
        return TrialOutcome(objectives, metrics, trial.pruned, output_dir)


# ------------------------------------------------------------------------------ the search


def directions_of(direction: Union[str, list[str], None], directions: Optional[list[str]] = None) -> list[str]:
    chosen = directions if directions is not None else direction
    chosen = [chosen] if isinstance(chosen, str) or chosen is None else list(chosen)
    chosen = [d or "minimize" for d in chosen]
    bad = [d for d in chosen if d not in DIRECTIONS]
    if bad:
        raise UsageError(f"direction {bad[0]!r} is not one of {', '.join(DIRECTIONS)}")
    return chosen


def hyperparameter_search(
    trainer: Any,
    hp_space: Optional[Union[Callable[[Any], dict[str, Any]], list[Param]]] = None,
    compute_objective: Optional[Callable[[dict[str, float]], Any]] = None,
    n_trials: int = 100,
    direction: Union[str, list[str]] = "minimize",
    backend: Optional[str] = None,
    hp_name: Optional[Callable[[Any], str]] = None,
    **kwargs: Any,
) -> Union[BestRun, list[BestRun]]:
    """The search behind ``Trainer.hyperparameter_search`` (see its docstring)."""
    if trainer.model_init is None:
        raise UsageError(
            "hyperparameter_search needs Trainer(model_init=...): each trial starts from a freshly built model"
        )
    if not isinstance(n_trials, int) or n_trials < 1:
        raise UsageError(f"n_trials must be a positive integer, got {n_trials!r}")
    directions = directions_of(direction, kwargs.pop("directions", None))
    search_backend = build_search_backend(trainer.args, backend)
    runner = TrialRunner(trainer, compute_objective or default_compute_objective, len(directions))
    best = search_backend.run(runner, n_trials=n_trials, directions=directions, hp_space=hp_space, hp_name=hp_name, **kwargs)
    trainer.search_results = runner.results
    if not best:
        raise UsageError("the search finished without a completed trial (every trial was pruned or failed)")
    return best[0] if len(directions) == 1 else best


def build_search_backend(args: Any, name: Optional[str]) -> Any:
    """The named search backend (or the only / first installed one), instantiated."""
    from treadle.plugins import get_plugin_manager

    pm = get_plugin_manager()
    if name is None:
        names = pm.names("search")
        if not names:
            from treadle.catalog import get_catalog
            from treadle.install_hints import install_command

            known = get_catalog().distributions_of_kind("search")
            hint = f" To add one: {' or '.join(install_command(d) for d in known)}" if known else ""
            raise UsageError(f"hyperparameter search needs a search backend plugin, and none is installed.{hint}")
        name = names[0]
    spec = pm.resolve("search", getattr(name, "value", name), args)
    return spec.load()(args, **spec.init)


def summary_table(results: list[dict[str, Any]], directions: list[str]) -> str:
    """One line per trial (state, objective, values, folder), the best marked with ``*``."""
    if not results:
        return "no trial ran"
    sign = [1 if d == "minimize" else -1 for d in directions]
    complete = [r for r in results if r["state"] == "complete"]
    best = min(complete, key=lambda r: [s * v for s, v in zip(sign, r["objectives"])]) if complete else None
    rows = [("", "trial", "state", "objective", "hyperparameters", "output")]
    for r in results:
        params = ", ".join(f"{k}={_short(v)}" for k, v in r["params"].items())
        objective = ", ".join(f"{v:.6g}" for v in r["objectives"])
        rows.append(("*" if r is best else "", str(r["trial"]), r["state"], objective, params, r["output_dir"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------ treadle search

SEARCH_FLAGS = {"n_trials": "str", "hp_space": "str", "direction": "str", "search_backend": "str", "storage": "str",
                "study_name": "str"}
"""``treadle search``'s own options, besides the training arguments every trial starts from."""

SEARCH_HELP = """treadle search: --hp_space FILE (YAML/JSON: argument -> {type: float|int, low, high, log}
or a list of choices; default: the backend's space), --n_trials N (default 100),
--direction minimize|maximize (or several, comma-separated), --search_backend NAME,
--storage URL (e.g. sqlite:///search.db: a search that stopped continues where it was),
--study_name NAME. Each trial trains in output_dir/run-<trial>; a table of the trials ends it.
"""


def run_search_command(args: Any, extras: dict[str, Any]) -> int:
    """``treadle search``: the task's model rebuilt per trial, a table of the trials at the end."""
    import copy

    from treadle.run import build_task, make_trainer
    from treadle.selection import prepare_components

    n_trials = str(extras.get("n_trials") or "100")
    if not n_trials.isdigit() or int(n_trials) < 1:
        raise UsageError(f"--n_trials must be a positive integer, got {n_trials!r}")
    directions = directions_of([d.strip() for d in str(extras.get("direction") or "minimize").split(",")])
    space = load_search_space(extras["hp_space"]) if extras.get("hp_space") else None
    components = prepare_components(args)
    with components.strategy.model_init_context():
        parts = build_task(args)
    if parts.model_init is None:  # every trial starts from the task's initial weights
        initial = parts.model
        parts.model_init = lambda: copy.deepcopy(initial)
        parts.model = None
    trainer = make_trainer(args, parts)
    options = {k: extras[k] for k in ("storage", "study_name") if extras.get(k)}
    best = trainer.hyperparameter_search(
        hp_space=space, n_trials=int(n_trials), direction=directions if len(directions) > 1 else directions[0],
        backend=extras.get("search_backend"), **options,
    )
    results = getattr(trainer, "search_results", [])
    if trainer.is_world_process_zero():
        os.makedirs(args.output_dir, exist_ok=True)
        best_runs = best if isinstance(best, list) else [best]
        summary = {"directions": directions, "trials": results,
                   "best": [{"run_id": b.run_id, "objective": b.objective, "hyperparameters": b.hyperparameters} for b in best_runs]}
        Path(args.output_dir, "search_results.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        print(summary_table(results, directions))
        for b in best_runs:
            print(f"best trial {b.run_id}: objective {b.objective} with {b.hyperparameters}")
    return 0
