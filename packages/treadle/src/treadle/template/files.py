"""The texts ``treadle plugin new`` writes (``string.Template``: ``$name`` is filled in, ``$$`` is a dollar).

Each kind has three: ``hooks`` (the light module the entry point names), ``impl`` (the component)
and ``test`` (a conformance class of ``treadle.testing`` plus what the kit cannot know).
"""

SELECTORS = {
    "reporter": "--report_to", "backend": "--backend", "precision": "--precision", "strategy": "--strategy",
    "optimizer": "--optim", "scheduler": "--lr_scheduler_type", "task": "--task",
}

PYPROJECT = '''[build-system]
requires = ["hatchling>=1.18"]
build-backend = "hatchling.build"

[project]
name = "$distribution"
version = "0.1.0"
description = "A treadle $kind plugin: $component"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["treadle>=$treadle_version,<1"]

[project.optional-dependencies]
test = ["pytest>=8"]

# treadle finds the plugin here. The entry-point name ($entry_point) is the plugin's name in
# `treadle plugins` and the prefix of its argument fields (--${entry_point}_...).
[project.entry-points.treadle]
$entry_point = "$package.hooks"

[tool.hatch.build.targets.wheel]
packages = ["src/$package"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

README = '''# $distribution

A [treadle](https://pypi.org/project/treadle/) $kind plugin. Install it next to treadle and
select it with `$selector $component`:

    pip install -e .
    treadle plugins            # $entry_point [ok], $kind: $component
    treadle train $selector $component --max_steps 20

## Layout

- `src/$package/hooks.py`: what the entry point loads. It only names the implementation
  (`"$package.$kind:..."`), so `treadle --help` and `treadle plugins` stay fast.
- `src/$package/$kind.py`: the implementation, imported when a run selects it.
- `tests/test_conformance.py`: treadle's conformance kit (`treadle.testing`) checks the plugin
  against its contract; add your own tests next to it.

## Test

    pip install -e ".[test]"
    pytest
'''

INIT = '''"""$distribution: a treadle $kind plugin (see hooks.py for what it registers)."""
'''

CONFTEST = '''# The kit's fixtures (treadle_cli, treadle_plugins, ...) and conformance classes.
pytest_plugins = ["treadle.testing"]
'''

_REPORTER_HOOKS = '''"""Registrations of $distribution; imports nothing but treadle's hook marker."""

from treadle import hookimpl


@hookimpl
def treadle_register_reporters(register):
    register("$component", "$package.reporter:${Cls}Reporter", description="metrics as CSV rows in output_dir")


@hookimpl
def treadle_add_arguments(schema):
    schema.add("${entry_point}_filename", type=str, default="metrics.csv",
               help="the CSV file (in output_dir) that --report_to $component writes")
'''

_REPORTER_IMPL = '''"""The $component reporter: one CSV row (step, key, value) per logged number."""

from __future__ import annotations

import csv
from pathlib import Path

from treadle.components import Reporter


class ${Cls}Reporter(Reporter):
    name = "$component"

    def setup(self, args, state, model):
        self.path = Path(args.output_dir) / args.${entry_point}_filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", encoding="utf-8", newline="")
        self._rows = csv.writer(self._file)
        if new:
            self._rows.writerow(["step", "key", "value"])

    def log(self, logs, step):
        for key, value in logs.items():
            if isinstance(value, (int, float)):
                self._rows.writerow([step, key, value])
        self._file.flush()

    def finish(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None
'''

_REPORTER_TEST = '''import csv

from treadle.testing import ReporterConformance


class Test${Cls}Reporter(ReporterConformance):
    entry_point = "$entry_point"
    name = "$component"

    def read_back(self, output_dir):
        written = {}
        with (output_dir / "metrics.csv").open(newline="") as handle:
            for row in csv.DictReader(handle):
                written.setdefault(int(row["step"]), {})[row["key"]] = float(row["value"])
        return written
'''

_BACKEND_HOOKS = '''"""Registrations of $distribution; imports nothing but treadle's hook marker."""

from treadle import hookimpl


@hookimpl
def treadle_register_backends(register):
    # A priority below the builtin cpu (0): `--backend auto` keeps choosing cpu.
    register("$component", "$package.backend:${Cls}Backend", description="the host CPU, as an example device",
             priority=-10)
'''

_BACKEND_IMPL = '''"""The $component backend: the host CPU (replace the device logic with your own)."""

from __future__ import annotations

import torch

from treadle.components import Backend


class ${Cls}Backend(Backend):
    name = "$component"
    places_batches = False  # host tensors are already where the model is

    @classmethod
    def is_available(cls):
        return True

    def setup_device(self, local_rank):
        return torch.device("cpu")
'''

_BACKEND_TEST = '''from treadle.testing import BackendConformance


class Test${Cls}Backend(BackendConformance):
    entry_point = "$entry_point"
    name = "$component"
'''

_PRECISION_HOOKS = '''"""Registrations of $distribution; imports nothing but treadle's hook marker."""

from treadle import hookimpl


@hookimpl
def treadle_register_precisions(register):
    register("$component", "$package.precision:${Cls}Precision", description="bfloat16 autocast of the forward pass")
'''

_PRECISION_IMPL = '''"""The $component precision: the forward pass under bfloat16 autocast, weights kept in float32."""

from __future__ import annotations

import torch

from treadle.components import Precision


class ${Cls}Precision(Precision):
    name = "$component"

    def forward_context(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
'''

_PRECISION_TEST = '''import torch

from treadle.testing import PrecisionConformance


class Test${Cls}Precision(PrecisionConformance):
    entry_point = "$entry_point"
    name = "$component"

    def check_training(self, trainer, args, tmp_path):
        super().check_training(trainer, args, tmp_path)
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # weights stay float32
'''

_STRATEGY_HOOKS = '''"""Registrations of $distribution; imports nothing but treadle's hook marker."""

from treadle import hookimpl


@hookimpl
def treadle_register_strategies(register):
    register("$component", "$package.strategy:${Cls}Strategy", description="one process, one device (an example)")
'''

_STRATEGY_IMPL = '''"""The $component strategy: one process on the backend's device (start here for your own wrapping)."""

from __future__ import annotations

from treadle.components import Strategy


class ${Cls}Strategy(Strategy):
    name = "$component"

    def setup_model(self, model):
        if self.root_device is None:
            self.setup_environment()
        return model.to(self.root_device)
'''

_STRATEGY_TEST = '''from treadle.testing import StrategyConformance


class Test${Cls}Strategy(StrategyConformance):
    entry_point = "$entry_point"
    name = "$component"
'''

_OPTIMIZER_HOOKS = '''"""Registrations of $distribution; imports nothing but treadle's hook marker."""

from treadle import hookimpl


@hookimpl
def treadle_register_optimizers(register):
    register("$component", "$package.optimizer:build", description="SGD with Nesterov momentum")


@hookimpl
def treadle_add_arguments(schema):
    schema.add("${entry_point}_momentum", type=float, default=0.9, help="the momentum of --optim $component")
'''

_OPTIMIZER_IMPL = '''"""The $component optimizer: ``torch.optim.SGD`` with Nesterov momentum.

treadle calls ``build(args, model)`` and gets back the optimizer class and its keyword
arguments; it builds the optimizer over the model's parameter groups itself.
"""

from __future__ import annotations

import torch


def build(args, model=None):
    return torch.optim.SGD, {"lr": args.learning_rate, "momentum": args.${entry_point}_momentum, "nesterov": True,
                             "weight_decay": args.weight_decay}
'''

_OPTIMIZER_TEST = '''from treadle.testing import OptimizerConformance


class Test${Cls}Optimizer(OptimizerConformance):
    entry_point = "$entry_point"
    name = "$component"

    def check_training(self, trainer, args, tmp_path):
        super().check_training(trainer, args, tmp_path)
        group = trainer.optimizer.param_groups[0]
        assert group["nesterov"] and group["momentum"] == args.${entry_point}_momentum
'''

_SCHEDULER_HOOKS = '''"""Registrations of $distribution; imports nothing but treadle's hook marker."""

from treadle import hookimpl


@hookimpl
def treadle_register_schedulers(register):
    register("$component", "$package.scheduler:build", description="linear warmup, then halve every N steps")


@hookimpl
def treadle_add_arguments(schema):
    schema.add("${entry_point}_halve_every", type=int, default=2, help="steps between halvings of the learning rate")
'''

_SCHEDULER_IMPL = '''"""The $component schedule: linear warmup, then the rate halves every ``--${entry_point}_halve_every`` steps."""

from __future__ import annotations

from dataclasses import dataclass

from torch.optim.lr_scheduler import LambdaLR


@dataclass
class _Factor:
    """A class, not a lambda: LambdaLR keeps a picklable callable's state in checkpoints."""

    warmup: int
    halve_every: int

    def __call__(self, step):
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return 0.5 ** ((step - self.warmup) // self.halve_every)


def build(optimizer, *, num_warmup_steps=0, num_training_steps=None, halve_every=2):
    """treadle passes the warmup and total steps; ``--lr_scheduler_kwargs`` may set ``halve_every``."""
    return LambdaLR(optimizer, _Factor(num_warmup_steps, halve_every))
'''

_SCHEDULER_TEST = '''from treadle.testing import SchedulerConformance


class Test${Cls}Scheduler(SchedulerConformance):
    entry_point = "$entry_point"
    name = "$component"
'''

_TASK_HOOKS = '''"""Registrations of $distribution; imports nothing but treadle's hook marker."""

from treadle import hookimpl


@hookimpl
def treadle_register_tasks(register):
    register("$component", "$package.task:build", description="noisy linear regression, no download",
             defaults={"learning_rate": 1e-2, "max_steps": 200})


@hookimpl
def treadle_add_arguments(schema):
    schema.add("${entry_point}_samples", type=int, default=512, help="training samples of --task $component")
'''

_TASK_IMPL = '''"""The $component task: fit y = x.w + noise with a linear layer (a model that returns its loss)."""

from __future__ import annotations

import torch
from torch import nn

from treadle.components import TaskParts


class Regression(nn.Module):
    def __init__(self, features=8):
        super().__init__()
        self.linear = nn.Linear(features, 1)

    def forward(self, x, labels=None):
        prediction = self.linear(x).squeeze(-1)
        out = {"logits": prediction}
        if labels is not None:
            out["loss"] = nn.functional.mse_loss(prediction, labels)
        return out


class Samples(torch.utils.data.Dataset):
    def __init__(self, count, seed, features=8):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(count, features, generator=generator)
        weights = torch.linspace(-1, 1, features)
        self.y = self.x @ weights + 0.05 * torch.randn(count, generator=generator)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        return {"x": self.x[index], "labels": self.y[index]}


def build(args):
    torch.manual_seed(args.seed)
    return TaskParts(
        model=Regression(),
        train_dataset=Samples(args.${entry_point}_samples, args.seed),
        eval_dataset=Samples(128, args.seed + 1),
    )
'''

_TASK_TEST = '''from treadle.testing import TaskConformance


class Test${Cls}Task(TaskConformance):
    entry_point = "$entry_point"
    name = "$component"
    overrides = {"${entry_point}_samples": 64}
'''

KIND_FILES = {
    "reporter": {"hooks": _REPORTER_HOOKS, "impl": _REPORTER_IMPL, "test": _REPORTER_TEST},
    "backend": {"hooks": _BACKEND_HOOKS, "impl": _BACKEND_IMPL, "test": _BACKEND_TEST},
    "precision": {"hooks": _PRECISION_HOOKS, "impl": _PRECISION_IMPL, "test": _PRECISION_TEST},
    "strategy": {"hooks": _STRATEGY_HOOKS, "impl": _STRATEGY_IMPL, "test": _STRATEGY_TEST},
    "optimizer": {"hooks": _OPTIMIZER_HOOKS, "impl": _OPTIMIZER_IMPL, "test": _OPTIMIZER_TEST},
    "scheduler": {"hooks": _SCHEDULER_HOOKS, "impl": _SCHEDULER_IMPL, "test": _SCHEDULER_TEST},
    "task": {"hooks": _TASK_HOOKS, "impl": _TASK_IMPL, "test": _TASK_TEST},
}
