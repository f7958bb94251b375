"""Conformance test classes, one per component kind, for a plugin author to subclass.

    # tests/test_conformance.py of the plugin "acme" (entry point ``acme``)
    from treadle.testing import ReporterConformance

    class TestAcmeReporter(ReporterConformance):
        entry_point = "acme"       # the name under [project.entry-points.treadle]
        name = "acme"              # what users select: --report_to acme

Every class checks, against the installed distribution, what treadle relies on:

- the entry point loads in a fresh interpreter without importing torch, the implementation
  module or the modules in ``requires`` (``treadle --help`` and ``treadle plugins`` stay fast);
- the registered names and argument fields are valid and namespaced by the entry point;
- the implementation loads and satisfies its contract (the ``treadle.components`` class, no
  abstract method left; a callable for optimizers, schedulers and tasks);
- with a module of ``requires`` hidden, selecting the component is one clear error, no traceback;
- components that take part in training: a short training with the kit's tiny task, and a save
  and resume round trip that equals the straight run bit for bit (``treadle verify-resume``).

Each kind adds its own checks. Class attributes tune them: ``overrides`` (more training
arguments), ``resume_exact = False`` where a component cannot resume exactly (documented
why), ``hidden_module`` (the module whose absence to test; default the first of ``requires``).
Override ``arguments(tmp_path)`` where the arguments need the test's directory (a server URL),
and the ``check_*`` methods to add assertions to the runs the kit already made.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar, Optional

import pytest

from treadle.testing.cli import run_treadle
from treadle.testing.isolation import IsolatedPlugins

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
"""What a registered name may look like: lower case, typed on a command line without quoting."""

_LIGHT_CHECK = """
import importlib.metadata, json, sys
entry_point, kind = sys.argv[1], sys.argv[2]
from treadle.plugins import TreadlePluginManager
manager = TreadlePluginManager()
manager.collect_all()
record = manager.records.get(entry_point)
specs = {name: spec for name, spec in manager.registry(kind).items() if spec.plugin is record}
heavy = sorted({spec.target.partition(":")[0] for spec in specs.values()} | {m for s in specs.values() for m in s.requires})
print(json.dumps({
    "found": record is not None,
    "status": record and record.status, "error": record and record.error,
    "arguments": record.arguments if record else [],
    "names": {name: {"target": s.target, "aliases": list(s.aliases), "requires": list(s.requires)} for name, s in specs.items()},
    "imported": sorted(m for m in ["torch", *heavy] if m in sys.modules),
}))
"""


class _Conformance:
    """What every kind checks; a subclass of a kind's class sets ``entry_point`` and ``name``."""

    kind: ClassVar[str] = ""
    contract: ClassVar[Optional[str]] = None
    """``"treadle.components:<Class>"`` the implementation must subclass; None: a callable."""

    entry_point: ClassVar[str] = ""
    name: ClassVar[str] = ""
    overrides: ClassVar[dict[str, Any]] = {}
    hidden_module: ClassVar[Optional[str]] = None

    # set-up -------------------------------------------------------------------------------
    @pytest.fixture(autouse=True)
    def treadle_conformance_plugins(self, monkeypatch: pytest.MonkeyPatch) -> Any:
        """Only this plugin's entry point loads (strictly: a broken plugin fails the test)."""
        if not self.entry_point or not self.name:
            pytest.fail(f"{type(self).__name__}: set the class attributes entry_point and name")
        isolated = IsolatedPlugins(monkeypatch)
        isolated.load(self.entry_point)
        yield isolated
        isolated.close()

    def spec(self) -> Any:
        from treadle.plugins import get_plugin_manager

        return get_plugin_manager().resolve(self.kind, self.name)

    def selection(self) -> dict[str, Any]:
        """The training arguments that select this component."""
        raise NotImplementedError

    def cli_selection(self) -> list[str]:
        from treadle.plugins import SELECTOR_OPTION

        return [SELECTOR_OPTION[self.kind], self.name]

    def arguments(self, tmp_path: Path) -> dict[str, Any]:
        """Training arguments besides the tiny defaults and the selection (default: ``overrides``)."""
        return dict(self.overrides)

    def make_args(self, tmp_path: Path, **more: Any) -> Any:
        from treadle.testing.tiny import tiny_args

        output_dir = more.pop("output_dir", tmp_path / "out")
        return tiny_args(output_dir, **{**self.selection(), **self.arguments(tmp_path), **more})

    def skip_unless_available(self) -> None:
        problem = self.spec().requirements_problem()
        if problem:
            pytest.skip(problem)

    # checks every kind runs ---------------------------------------------------------------------
    def test_entry_point_loads_without_torch(self) -> None:
        done = subprocess.run(
            [sys.executable, "-c", _LIGHT_CHECK, self.entry_point, self.kind],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["found"], f"no installed entry point {self.entry_point!r} in the group 'treadle'"
        assert seen["status"] == "ok", f"plugin {self.entry_point} is broken: {seen['error']}"
        assert self.name in seen["names"], f"{self.entry_point} registers no {self.kind} {self.name!r}: {sorted(seen['names'])}"
        assert not seen["imported"], (
            f"loading the entry point and building the registries imported {seen['imported']}; "
            "hooks.py must name implementations as 'module:attr' strings and import only treadle's light modules"
        )

    def test_names_are_valid(self, treadle_conformance_plugins: IsolatedPlugins) -> None:
        record = treadle_conformance_plugins.record(self.entry_point)
        assert record.provides.get(self.kind), f"{self.entry_point} provides no {self.kind}"
        for name in record.provides[self.kind]:
            spec = self.spec() if name == self.name else treadle_conformance_plugins.manager.registry(self.kind)[name]
            for spelling in (spec.name, *spec.aliases):
                assert NAME_PATTERN.match(spelling), f"{self.kind} name {spelling!r}: use lower case letters, digits, . _ + -"
            module, _, attr = spec.target.partition(":")
            assert module and attr, f"target {spec.target!r} must be 'package.module:attr'"
        namespace = self.entry_point.replace("-", "_") + "_"
        for field in record.arguments:
            assert field.startswith(namespace), f"argument {field!r} is not namespaced as {namespace}*"

    def test_implements_the_contract(self) -> None:
        self.skip_unless_available()
        implementation = self.spec().load()
        if self.contract is None:
            assert callable(implementation), f"{self.kind} {self.name!r} loads {implementation!r}, which is not callable"
            return
        from treadle.plugins import import_target

        base = import_target(self.contract)
        assert isinstance(implementation, type) and issubclass(implementation, base), (
            f"{self.kind} {self.name!r} loads {implementation!r}, which does not subclass {self.contract}"
        )
        assert not inspect.isabstract(implementation), (
            f"{implementation.__name__} leaves abstract methods: {sorted(implementation.__abstractmethods__)}"
        )

    def test_missing_dependency_is_a_clear_error(self, tmp_path: Path) -> None:
        module = self.hidden_module or next(iter(self.spec().requires), None)
        if module is None:
            pytest.skip(f"{self.kind} {self.name!r} registers no requires=(...) module whose absence could be tested")
        result = self.run_cli_with_hidden(tmp_path, module)
        result.assert_clean_error(module)

    def run_cli_with_hidden(self, tmp_path: Path, module: str) -> Any:
        return run_treadle(
            "train", "--task", "treadle.testing.tiny:build", "--max_steps", "1", "--output_dir", tmp_path / "out",
            "--report_to", "none", "--disable_tqdm", "true", *self.cli_selection(),
            env={"TREADLE_PLUGINS": self.entry_point, "TREADLE_DISABLE_PLUGIN_AUTOLOAD": None},
            hide=(module,), cwd=tmp_path,
        )


class _TrainingConformance(_Conformance):
    """Kinds that take part in a training run: a short run and an exact save / resume."""

    resume_exact: ClassVar[bool] = True
    stop_at: ClassVar[int] = 2

    def train(self, args: Any, callbacks: tuple = ()) -> Any:
        from treadle.run import build_task, make_trainer

        parts = build_task(args)
        parts.callbacks = [*(parts.callbacks or []), *callbacks]
        trainer = make_trainer(args, parts)
        trainer.train()
        return trainer

    def test_short_training(self, tmp_path: Path, treadle_hook_recorder: Any) -> None:
        self.skip_unless_available()
        args = self.make_args(tmp_path)
        trainer = self.train(args, callbacks=(treadle_hook_recorder,))
        assert trainer.state.global_step == args.max_steps
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        assert losses and all(math.isfinite(loss) for loss in losses), f"losses: {losses}"
        assert treadle_hook_recorder.count("optimizer_step") == args.max_steps
        assert treadle_hook_recorder.names()[-1] == "train_end"
        self.check_training(trainer, args, tmp_path)

    def check_training(self, trainer: Any, args: Any, tmp_path: Path) -> None:
        """Kind- or plugin-specific assertions on the short run (override, call super())."""

    def test_save_and_resume_round_trip(self, tmp_path: Path) -> None:
        self.skip_unless_available()
        from treadle.verify_resume import verify_resume

        report = verify_resume(self.make_args(tmp_path), self.stop_at, workdir=tmp_path / "verify")
        assert report.resumed and report.resumed[-1].step == report.max_steps, "the resumed run did not reach max_steps"
        if self.resume_exact:
            assert report.identical, str(report)


class BackendConformance(_TrainingConformance):
    """A device family. Training runs only where ``is_available()``; elsewhere those tests skip
    with the backend's ``unavailable_reason()``."""

    kind = "backend"
    contract = "treadle.components:Backend"

    def selection(self) -> dict[str, Any]:
        return {"backend": self.name}

    def skip_unless_available(self) -> None:
        super().skip_unless_available()
        cls = self.spec().load()
        if not cls.is_available():
            pytest.skip(f"backend {self.name!r} is not available here: {cls.unavailable_reason()}")

    def test_availability_never_raises(self) -> None:
        super().skip_unless_available()
        cls = self.spec().load()
        available = cls.is_available()
        assert isinstance(available, bool)
        reason = cls.unavailable_reason()
        assert (reason is None) if available else (isinstance(reason, str) and reason), (available, reason)
        assert isinstance(cls.device_count(), int) and (cls.device_count() > 0) == available

    def check_training(self, trainer: Any, args: Any, tmp_path: Path) -> None:
        assert trainer.backend.name == self.name or type(trainer.backend) is self.spec().load()
        parameter = next(trainer.model.parameters())
        assert parameter.device.type == trainer.args.device.type


class PrecisionConformance(_TrainingConformance):
    kind = "precision"
    contract = "treadle.components:Precision"

    def selection(self) -> dict[str, Any]:
        return {"precision": self.name}

    def check_training(self, trainer: Any, args: Any, tmp_path: Path) -> None:
        state = trainer.precision.state_dict()
        assert isinstance(state, dict)
        json.dumps({k: v for k, v in state.items() if not hasattr(v, "shape")})  # plain values stay JSON-able


class StrategyConformance(_TrainingConformance):
    kind = "strategy"
    contract = "treadle.components:Strategy"

    def selection(self) -> dict[str, Any]:
        return {"strategy": self.name}

    # what a launcher sets: a strategy that leaves one behind makes the rest of the process (a
    # second Trainer, `treadle train --nproc_per_node`) believe it was started by torchrun
    launcher_variables: ClassVar[tuple[str, ...]] = (
        "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
        "TORCHELASTIC_RUN_ID",
    )

    def test_leaves_the_launcher_environment_as_it_found_it(self, tmp_path: Path) -> None:
        self.skip_unless_available()
        before = {name: os.environ.get(name) for name in self.launcher_variables}
        self.train(self.make_args(tmp_path))
        after = {name: os.environ.get(name) for name in self.launcher_variables}
        changed = {name: (before[name], after[name]) for name in before if before[name] != after[name]}
        assert not changed, f"strategy {self.name!r} left launcher variables changed after teardown (before, after): {changed}"

    def check_training(self, trainer: Any, args: Any, tmp_path: Path) -> None:
        from treadle.checkpoint import verify_checkpoint

        trainer.save_model(str(tmp_path / "final"))
        assert (tmp_path / "final" / "model.safetensors").is_file(), "save_model wrote no model.safetensors"
        args2 = self.make_args(tmp_path, save_strategy="steps", save_steps=args.max_steps, output_dir=str(tmp_path / "ckpt"))
        self.train(args2)
        verify_checkpoint(tmp_path / "ckpt" / f"checkpoint-{args.max_steps}")  # every file in the manifest, intact


class OptimizerConformance(_TrainingConformance):
    """``--optim NAME``: the registered target is a callable the core builds the optimizer with."""

    kind = "optimizer"

    def selection(self) -> dict[str, Any]:
        return {"optim": self.name}

    def check_training(self, trainer: Any, args: Any, tmp_path: Path) -> None:
        import torch

        from treadle.testing.tiny import build

        initial = build(args).model.state_dict()
        moved = any(not torch.equal(initial[k], v.detach().cpu()) for k, v in trainer.model.state_dict().items())
        assert moved, f"optimizer {self.name!r} left every weight where it started"


class SchedulerConformance(_TrainingConformance):
    """``--lr_scheduler_type NAME``: the learning rate the loop logs follows the schedule."""

    kind = "scheduler"
    overrides: ClassVar[dict[str, Any]] = {"warmup_steps": 1}

    def selection(self) -> dict[str, Any]:
        return {"lr_scheduler_type": self.name}

    def check_training(self, trainer: Any, args: Any, tmp_path: Path) -> None:
        rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
        assert len(rates) == args.max_steps and all(math.isfinite(r) and r >= 0 for r in rates), rates


class ReporterConformance(_TrainingConformance):
    """``--report_to NAME``. Override ``read_back(output_dir)`` to return ``{step: {key: value}}``
    of what the reporter wrote (its files, its server): the kit then checks it against the run's
    logs. A ``log`` that raises must be one warning with the training going on."""

    kind = "reporter"
    contract = "treadle.components:Reporter"

    def selection(self) -> dict[str, Any]:
        return {"report_to": [self.name]}

    def cli_selection(self) -> list[str]:
        return []  # --report_to is given by the kit's command line below

    def run_cli_with_hidden(self, tmp_path: Path, module: str) -> Any:
        return run_treadle(
            "train", "--task", "treadle.testing.tiny:build", "--max_steps", "1", "--output_dir", tmp_path / "out",
            "--report_to", self.name, "--disable_tqdm", "true",
            env={"TREADLE_PLUGINS": self.entry_point, "TREADLE_DISABLE_PLUGIN_AUTOLOAD": None},
            hide=(module,), cwd=tmp_path,
        )

    def read_back(self, output_dir: Path) -> Optional[dict[int, dict[str, float]]]:
        """What the reporter recorded, by step; None (the default) skips the comparison."""
        return None

    def check_training(self, trainer: Any, args: Any, tmp_path: Path) -> None:
        written = self.read_back(Path(args.output_dir))
        if written is None:
            return
        for entry in trainer.state.log_history:
            if "loss" in entry:
                step = entry["step"]
                assert step in written, f"step {step} was logged but the reporter wrote {sorted(written)}"
                row = written[step]
                value = row.get("loss", next((v for k, v in row.items() if k.endswith("/loss")), None))
                assert value is not None and math.isclose(value, entry["loss"], rel_tol=1e-5), (step, written[step])

    def test_a_failing_log_is_one_warning(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
        self.skip_unless_available()
        cls = self.spec().load()

        def broken_log(reporter: Any, logs: dict, step: int) -> None:
            raise ConnectionError("the service went away")

        monkeypatch.setattr(cls, "log", broken_log)
        args = self.make_args(tmp_path)
        with caplog.at_level("WARNING", logger="treadle"):
            trainer = self.train(args)
        assert trainer.state.global_step == args.max_steps, "a failing reporter stopped the training"
        warnings = [r for r in caplog.records if "the service went away" in r.getMessage()]
        assert len(warnings) == 1, f"expected one warning, got {[r.getMessage() for r in warnings]}"

    def test_state_for_resume_is_json(self, tmp_path: Path) -> None:
        self.skip_unless_available()
        from treadle.selection import build_reporters

        args = self.make_args(tmp_path)
        for name, reporter in build_reporters(args):
            if name == self.name:
                json.dumps(reporter.state_dict())  # kept in the checkpoint's JSON run state
                return
        pytest.fail(f"--report_to {self.name} built no reporter of that name")


class HubConformance(_TrainingConformance):
    """``--push_to_hub``. Override ``arguments(tmp_path)`` with the hub options that point at a
    real test server (or folder) started by your fixture, and ``pushed(tmp_path)`` returning the
    file names the hub holds afterwards."""

    kind = "hub"
    contract = "treadle.components:HubSync"
    # uploads are side effects: a run that pushes checkpoints still resumes to the same bits

    def selection(self) -> dict[str, Any]:
        return {"push_to_hub": True}

    def cli_selection(self) -> list[str]:
        return ["--push_to_hub", "true"] + [w for k, v in self.arguments(Path(".")).items() for w in (f"--{k}", str(v))]

    def pushed(self, tmp_path: Path) -> Optional[set[str]]:
        """File names the hub holds after the run (None skips the check)."""
        return None

    def check_training(self, trainer: Any, args: Any, tmp_path: Path) -> None:
        trainer.push_to_hub(blocking=True)
        files = self.pushed(tmp_path)
        if files is not None:
            assert "model.safetensors" in files, f"the hub holds {sorted(files)}"



class TaskConformance(_TrainingConformance):
    """``--task NAME``: a function ``(args) -> TaskParts`` with a model and a training set.
    ``overrides`` should make the task small (a tiny config, a few samples)."""

    kind = "task"

    def selection(self) -> dict[str, Any]:
        return {"task": self.name}

    def test_builds_task_parts(self, tmp_path: Path) -> None:
        self.skip_unless_available()
        from treadle.components import TaskParts
        from treadle.run import build_task

        parts = build_task(self.make_args(tmp_path))
        assert isinstance(parts, TaskParts)
        assert parts.model is not None or parts.model_init is not None
        assert parts.train_dataset is not None and len(parts.train_dataset) > 0


class SearchConformance(_Conformance):
    """A search backend: two trials of the tiny task over a one-parameter space."""

    kind = "search"
    contract = "treadle.components:SearchBackend"

    def selection(self) -> dict[str, Any]:
        return {}

    def cli_selection(self) -> list[str]:
        return []

    def run_cli_with_hidden(self, tmp_path: Path, module: str) -> Any:
        return run_treadle(
            "search", "--task", "treadle.testing.tiny:build", "--max_steps", "1", "--output_dir", tmp_path / "out",
            "--report_to", "none", "--disable_tqdm", "true", "--n_trials", "1", "--search_backend", self.name,
            env={"TREADLE_PLUGINS": self.entry_point, "TREADLE_DISABLE_PLUGIN_AUTOLOAD": None},
            hide=(module,), cwd=tmp_path,
        )

    def test_two_trials(self, tmp_path: Path) -> None:
        self.skip_unless_available()
        from treadle.search import Param
        from treadle.testing.tiny import build
        from treadle.trainer import Trainer

        args = self.make_args(tmp_path, eval_strategy="steps", eval_steps=2)
        parts = build(args)
        trainer = Trainer(
            args=args, model_init=lambda *_: build(args).model, train_dataset=parts.train_dataset,
            eval_dataset=parts.eval_dataset, compute_metrics=parts.compute_metrics,
        )
        space = [Param("learning_rate", "float", low=1e-4, high=1e-2, log=True)]
        best = trainer.hyperparameter_search(hp_space=space, n_trials=2, direction="minimize", backend=self.name)
        assert len(trainer.search_results) == 2
        assert 1e-4 <= best.hyperparameters["learning_rate"] <= 1e-2
        assert math.isfinite(best.objective)
