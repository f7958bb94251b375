"""Every registration path reaches the run's lifecycle hooks: selected components and late registrations."""

from __future__ import annotations

from trainer_kit import Classifier, make_args, make_data

from treadle import hookimpl
from treadle.builtin.fp32 import Fp32Precision
from treadle.plugins import TreadlePluginManager, get_plugin_manager, reset_plugin_manager
from treadle.trainer import Trainer

import pytest
import torch


class Seen:
    """Records the lifecycle events it receives."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def treadle_on_train_begin(self):
        self.events.append("train_begin")

    @hookimpl
    def treadle_on_step_end(self):
        self.events.append("step_end")


def test_registering_after_construction_reaches_the_loop(tmp_path):
    trainer = Trainer(Classifier(), args=make_args(tmp_path, max_steps=2), train_dataset=make_data(32))
    seen = Seen()
    trainer.run_hooks.register(seen, name="late")
    trainer.train()
    assert seen.events == ["train_begin", "step_end", "step_end"]
    trainer.run_hooks.unregister(seen)
    trainer.train()
    assert len(seen.events) == 3


class HookedPrecision(Fp32Precision):
    """A precision plugin that also wants lifecycle and checkpoint hooks."""

    instances: list["HookedPrecision"] = []

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.events: list[str] = []
        HookedPrecision.instances.append(self)

    @hookimpl
    def treadle_on_step_end(self):
        self.events.append("step_end")

    @hookimpl
    def treadle_checkpoint_state(self):
        return {"steps_seen": len(self.events)}


class PrecisionPlugin:
    @hookimpl
    def treadle_register_precisions(self, register):
        register("hooked", f"{__name__}:HookedPrecision")


@pytest.fixture
def hooked_pm():
    pm = TreadlePluginManager(autoload=False)
    pm.register_module(PrecisionPlugin(), "hooked")
    previous = get_plugin_manager()
    reset_plugin_manager(pm)
    yield pm
    reset_plugin_manager(previous)


def test_selected_component_receives_lifecycle_and_checkpoint_hooks(hooked_pm, tmp_path):
    HookedPrecision.instances.clear()
    args = make_args(tmp_path, max_steps=2, precision="hooked", save_strategy="steps", save_steps=2)
    trainer = Trainer(Classifier(), args=args, train_dataset=make_data(32))
    assert isinstance(trainer.precision, HookedPrecision)
    trainer.train()
    assert trainer.precision.events == ["step_end", "step_end"]
    states = (tmp_path / "out" / "checkpoint-2" / "plugin_states.json").read_text()
    assert '"precision:hooked"' in states and '"steps_seen": 2' in states


class InfiniteGradient(torch.nn.Module):
    """A finite loss (0) whose gradient is +inf: sqrt at 0."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, labels=None):
        return {"loss": torch.sqrt(self.p).sum() + 0 * x.sum()}


class ScalingPrecision(Fp32Precision):
    """Declares loss scaling (without overriding unscale_gradients): the loop must trust it."""

    scales_loss = True


class ScalingPlugin:
    @hookimpl
    def treadle_register_precisions(self, register):
        register("scaling", f"{__name__}:ScalingPrecision")


@pytest.mark.parametrize("precision, skipped", [("fp32", True), ("scaling", False)])
def test_loss_scaling_is_a_declared_capability(tmp_path, precision, skipped):
    pm = TreadlePluginManager(autoload=False)
    pm.register_module(ScalingPlugin(), "scaling")
    previous = get_plugin_manager()
    reset_plugin_manager(pm)
    try:
        args = make_args(tmp_path, max_steps=1, precision=precision, nan_inf_policy="skip_step", max_grad_norm=0)
        trainer = Trainer(InfiniteGradient(), args=args, train_dataset=make_data(8))
        trainer.train()
    finally:
        reset_plugin_manager(previous)
    assert (trainer.model.p.item() == 0.0) is skipped


class MetricScheduler:
    """A plugin's metric-driven scheduler: declares ``needs_metric`` and records what it gets."""

    needs_metric = True

    def __init__(self, optimizer) -> None:
        self.optimizer = optimizer
        self.metrics: list[float] = []

    def step(self, metric=None) -> None:
        self.metrics.append(metric)

    def state_dict(self):
        return {}

    def load_state_dict(self, state) -> None:
        pass


def metric_scheduler(optimizer, **kwargs):
    return MetricScheduler(optimizer)


def test_metric_driven_plugin_scheduler_gets_the_metric(tmp_path):
    args = make_args(
        tmp_path, max_steps=2, eval_strategy="steps", eval_steps=1, lr_scheduler_type=f"{__name__}:metric_scheduler"
    )
    trainer = Trainer(Classifier(), args=args, train_dataset=make_data(32), eval_dataset=make_data(16))
    trainer.train()
    metrics = trainer.lr_scheduler.metrics
    assert len(metrics) == 2 and all(isinstance(m, float) for m in metrics)


class AlwaysReporterPlugin:
    @hookimpl
    def treadle_register_reporters(self, register):
        register("audit", "json:dumps", always=True)
        register("opt_in", "json:loads")


def test_always_on_reporters_are_registration_metadata(tmp_path):
    from treadle.selection import reporter_names

    pm = TreadlePluginManager(autoload=False)
    assert reporter_names(make_args(tmp_path, report_to="none"), pm) == ["console"]
    pm.register_module(AlwaysReporterPlugin(), "audit")
    assert reporter_names(make_args(tmp_path, report_to="none"), pm) == ["audit", "console"]
    assert reporter_names(make_args(tmp_path, report_to=["jsonl"]), pm) == ["audit", "console", "jsonl"]
