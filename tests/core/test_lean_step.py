"""The common optimizer step takes ``Trainer._run_lean_step``; events go through generated callers.

A run with one micro-batch per step, the model's own loss and torch's backward / clip / step
(no strategy or precision changing them) needs none of the general step's branches; the lean
step does the same work in one frame. These tests hold it to the general step (same weights,
logs and events), check which settings and overrides send a run back to the general step, and
check that a step where nobody listens makes no call into the loop's own code but that one.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import treadle
from torch.nn import functional as F
from torch.utils.data import default_collate
from trainer_kit import Classifier, Recorder, identical_weights, make_args, make_data, weights
from treadle import hookimpl
from treadle.trainer import Trainer

TREADLE_DIR = str(Path(treadle.__file__).parent)


class GeneralStep(Trainer):
    """A subclass with its own ``training_step`` (here just the inherited one): the general step."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        return super().training_step(model, inputs, num_items_in_batch)


def _run(trainer_cls, tmp_path, name, **overrides):
    args = make_args(
        tmp_path / name, max_steps=12, optim="adamw_torch", lr_scheduler_type="linear", max_grad_norm=0.5,
        logging_strategy="steps", logging_steps=4, **overrides,
    )
    recorder = Recorder()
    model = Classifier()
    trainer = trainer_cls(model, args=args, train_dataset=make_data(64), callbacks=[recorder])
    trainer.train()
    timing = ("runtime", "per_second")
    logs = [{k: v for k, v in entry.items() if not any(t in k for t in timing)} for entry in trainer.state.log_history]
    return trainer, weights(model), logs, recorder.events


def test_lean_step_trains_like_the_general_step(tmp_path):
    lean, lean_weights, lean_logs, lean_events = _run(Trainer, tmp_path, "lean")
    general, general_weights, general_logs, general_events = _run(GeneralStep, tmp_path, "general")
    assert lean._lean_step and not general._lean_step
    assert identical_weights(lean_weights, general_weights)
    assert lean_logs == general_logs and {"loss", "grad_norm", "learning_rate"} <= set(lean_logs[0])
    assert lean_events == general_events
    assert lean_events.count(("optimizer_step", 12)) == 0 and ("optimizer_step", 11) in lean_events


def _loss_outside(outputs, labels, num_items_in_batch=None):
    return F.cross_entropy(outputs["logits"], labels)


class OwnLoss(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@pytest.mark.parametrize(
    "trainer_cls, overrides, extra",
    [
        (Trainer, {"gradient_accumulation_steps": 2}, {}),
        (Trainer, {"nan_inf_policy": "skip_step"}, {}),
        (Trainer, {"label_smoothing_factor": 0.1}, {}),
        (Trainer, {"include_num_input_tokens_seen": True}, {}),
        (Trainer, {}, {"compute_loss_func": _loss_outside}),
        (OwnLoss, {}, {}),
        (GeneralStep, {}, {}),
    ],
    ids=[
        "accumulation", "nan-check", "label-smoothing", "token-count", "compute-loss-func", "compute-loss-override",
        "training-step-override",
    ],
)
def test_settings_the_lean_step_does_not_cover_take_the_general_step(tmp_path, trainer_cls, overrides, extra):
    trainer = trainer_cls(Classifier(), args=make_args(tmp_path, max_steps=2, **overrides), train_dataset=make_data(32), **extra)
    assert not trainer._lean_step
    trainer.train()  # and it trains
    assert trainer.state.global_step == 2


def test_a_step_method_patched_onto_the_trainer_class_takes_the_general_step(tmp_path, monkeypatch):
    calls = []
    original = Trainer.compute_loss

    def counted(self, *args, **kwargs):
        calls.append(self.state.global_step)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "compute_loss", counted)
    trainer = Trainer(Classifier(), args=make_args(tmp_path, max_steps=3), train_dataset=make_data(32))
    trainer.train()
    assert not trainer._lean_step and calls == [0, 1, 2]


def test_a_step_method_set_on_the_instance_takes_the_general_step(tmp_path):
    trainer = Trainer(Classifier(), args=make_args(tmp_path, max_steps=3), train_dataset=make_data(32))
    calls = []
    original = trainer.training_step

    def counted(model, inputs, num_items_in_batch=None):
        calls.append(trainer.state.global_step)
        return original(model, inputs, num_items_in_batch)

    trainer.training_step = counted
    trainer.train()
    assert not trainer._lean_step and calls == [0, 1, 2]


class CountingCollate:
    """Collates rows into ``x`` / ``labels``; between batches 3 and 6 counts calls into treadle's code."""

    def __init__(self) -> None:
        self.batches = 0
        self.calls: Counter = Counter()

    def __call__(self, rows):
        self.batches += 1
        if self.batches == 3:
            sys.setprofile(self._count)
        elif self.batches == 6:  # steps 3, 4 and 5 have run in between
            sys.setprofile(None)
        x, y = default_collate(rows)
        return {"x": x, "labels": y}

    def _count(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(TREADLE_DIR):
            self.calls[(Path(frame.f_code.co_filename).name, frame.f_code.co_name)] += 1


def test_a_step_nobody_listens_to_makes_one_call_into_the_loop(tmp_path):
    collate = CountingCollate()
    args = make_args(tmp_path, max_steps=8, max_grad_norm=1.0)
    trainer = Trainer(Classifier(), args=args, train_dataset=make_data(64), data_collator=collate)
    try:
        trainer.train()
    finally:
        sys.setprofile(None)
    loop_calls = {key: n for key, n in collate.calls.items() if key[0] in ("trainer.py", "events.py")}
    assert loop_calls == {("trainer.py", "_run_lean_step"): 3}
    assert collate.calls[("metrics.py", "add")] == 3  # the loss window, once per step


class RegistersLate:
    """At step 2 registers a second plugin, which must see the rest of the same epoch."""

    def __init__(self, trainer: Trainer, late: Recorder) -> None:
        self.trainer, self.late = trainer, late

    @hookimpl
    def treadle_on_step_end(self, state):
        if state.global_step == 2:
            self.trainer.run_hooks.register(self.late, name="late")


def test_a_plugin_registered_mid_epoch_gets_the_next_steps_events(tmp_path):
    trainer = Trainer(Classifier(), args=make_args(tmp_path, max_steps=4), train_dataset=make_data(64))
    late = Recorder()
    trainer.run_hooks.register(RegistersLate(trainer, late), name="registers-late")
    trainer.train()
    step_events = [event for event in late.events if event[0] in ("step_begin", "optimizer_step", "step_end")]
    assert step_events == [
        ("step_begin", 2), ("optimizer_step", 2), ("step_end", 3),
        ("step_begin", 3), ("optimizer_step", 3), ("step_end", 4),
    ]


class LogsAndRaises:
    def __init__(self) -> None:
        self.logged: list[dict] = []

    @hookimpl
    def treadle_on_log(self, state, logs):
        self.logged.append(dict(logs))
        if state.global_step == 2:
            raise ValueError("bad log")


def test_generated_callers_pass_event_values_and_name_the_plugin_that_raised(tmp_path):
    plugin = LogsAndRaises()
    args = make_args(tmp_path, max_steps=3, logging_strategy="steps", logging_steps=1)
    trainer = Trainer(Classifier(), args=args, train_dataset=make_data(64))
    trainer.run_hooks.register(plugin, name="logs-and-raises")
    with pytest.raises(ValueError, match="bad log") as err:
        trainer.train()
    assert "treadle: raised in treadle_on_log of plugin logs-and-raises" in err.value.__notes__
    assert [set(logs) >= {"loss", "learning_rate"} for logs in plugin.logged] == [True, True]
    assert torch.isfinite(torch.tensor(plugin.logged[0]["loss"]))
