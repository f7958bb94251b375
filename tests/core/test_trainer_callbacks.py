"""Lifecycle hooks, callbacks of both shapes, early stopping, reporters and component checks."""

from __future__ import annotations

import json
from types import ModuleType

import pytest
from trainer_kit import Classifier, Recorder, make_args, make_data
from treadle.callbacks import EarlyStoppingCallback, TrainerCallback, TrainerCallbackAdapter
from treadle.errors import UsageError
from treadle.markers import hookimpl
from treadle.plugins import get_plugin_manager
from treadle.state import TrainerControl
from treadle.trainer import Trainer


def test_events_come_in_the_documented_order(tmp_path):
    recorder = Recorder()
    args = make_args(tmp_path, max_steps=2, gradient_accumulation_steps=2, logging_strategy="steps", logging_steps=2,
                     eval_strategy="steps", eval_steps=2)
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64), eval_dataset=make_data(16), callbacks=[recorder])
    trainer.train()
    step = ["step_begin", "substep_end", "pre_optimizer_step", "optimizer_step", "step_end"]
    assert recorder.names() == [
        "init_end", "train_begin", "epoch_begin", *step, *step, "log", "log", "evaluate", "epoch_end", "log", "train_end",
    ]
    assert recorder.events[-1] == ("train_end", 2)


class TransformersStyle:
    """Shaped like transformers' TrainerCallback, without importing anything."""

    def __init__(self) -> None:
        self.kwargs: dict = {}
        self.logged: list = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.kwargs = kwargs

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            return TrainerControl(should_training_stop=True)
        return None

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logged.append(dict(logs))


def test_a_trainer_callback_shaped_object_steers_through_the_control_it_returns(tmp_path):
    callback = TransformersStyle()
    trainer = Trainer(Classifier(), make_args(tmp_path, num_train_epochs=3), train_dataset=make_data(64), callbacks=[callback])
    trainer.train()
    assert trainer.state.global_step == 3
    assert callback.kwargs["model"] is trainer.model and callback.kwargs["optimizer"] is trainer.optimizer
    assert callback.kwargs["lr_scheduler"] is trainer.lr_scheduler
    assert callback.kwargs["train_dataloader"] is trainer.train_dataloader
    assert "train_loss" in callback.logged[-1]


def test_only_the_overridden_events_of_a_trainer_callback_are_hooked():
    class OnlyLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    adapter = TrainerCallbackAdapter(OnlyLogs())
    hooks = sorted(name for name in vars(adapter) if name.startswith("treadle_on_"))
    assert hooks == ["treadle_on_log"]
    with pytest.raises(UsageError, match="implements no event"):
        TrainerCallbackAdapter(object())


def test_user_callbacks_run_after_the_flow_plugin_and_may_override_it(tmp_path):
    class EveryStep:
        @hookimpl
        def treadle_on_step_end(self, state, control):
            control.should_log = True
            if state.global_step == 2:
                control.should_save = True

    args = make_args(tmp_path, max_steps=4, logging_strategy="no", save_strategy="no")
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64), callbacks=[EveryStep()])
    trainer.train()
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 2, 3, 4]
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("checkpoint")] == ["checkpoint-2"]


def test_add_pop_and_remove_callbacks(tmp_path):
    trainer = Trainer(Classifier(), make_args(tmp_path, max_steps=1), train_dataset=make_data(16))
    trainer.add_callback(Recorder)
    added = trainer.callbacks[-1]
    assert isinstance(added, Recorder)
    assert trainer.pop_callback(Recorder) is added and trainer.pop_callback(Recorder) is None
    other = Recorder()
    trainer.add_callback(other)
    trainer.remove_callback(other)
    trainer.train()
    assert added.events == [] and other.events == []


def test_a_hook_that_raises_names_its_callback(tmp_path):
    class Exploding:
        @hookimpl
        def treadle_on_step_end(self):
            raise RuntimeError("boom")

    trainer = Trainer(Classifier(), make_args(tmp_path, max_steps=2), train_dataset=make_data(16), callbacks=[Exploding()])
    with pytest.raises(RuntimeError, match="boom") as raised:
        trainer.train()
    assert any("Exploding" in note for note in getattr(raised.value, "__notes__", []))


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path):
    args = make_args(tmp_path, learning_rate=1e-9, max_steps=20, eval_strategy="steps", eval_steps=1, metric_for_best_model="loss")
    stopper = EarlyStoppingCallback(early_stopping_patience=2)
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64), eval_dataset=make_data(16), callbacks=[stopper])
    trainer.train()
    assert trainer.state.global_step == 3  # the first evaluation sets the best, two more do not beat it
    assert stopper.early_stopping_patience_counter == 2
    assert trainer.stateful_callbacks() == [stopper]
    restored = EarlyStoppingCallback.from_state(json.loads(json.dumps(stopper.state())))
    assert vars(restored) == vars(stopper)


def test_early_stopping_keeps_going_while_the_metric_improves(tmp_path):
    args = make_args(tmp_path, learning_rate=0.1, max_steps=6, eval_strategy="steps", eval_steps=1, metric_for_best_model="loss")
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64), eval_dataset=make_data(64),
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=3)])
    trainer.train()
    assert trainer.state.global_step == 6


def test_early_stopping_needs_a_metric_and_evaluations(tmp_path):
    trainer = Trainer(Classifier(), make_args(tmp_path), train_dataset=make_data(16), callbacks=[EarlyStoppingCallback()])
    with pytest.raises(UsageError, match="metric_for_best_model") as raised:
        trainer.train()
    assert "eval_strategy" in str(raised.value)


# --------------------------------------------------------------------------------------------
# Reporters and components
# --------------------------------------------------------------------------------------------


def _reporter_names(trainer):
    return sorted(name.split(":")[1] for name, _ in trainer.run_hooks._pm.list_name_plugin() if name.startswith("reporter:"))


@pytest.mark.parametrize(("report_to", "expected"), [("none", ["console"]), (["jsonl"], ["console", "jsonl"]), ("all", ["console", "jsonl"])])
def test_the_console_reporter_is_always_there_and_report_to_adds_others(tmp_path, report_to, expected):
    trainer = Trainer(Classifier(), make_args(tmp_path, report_to=report_to), train_dataset=make_data(16))
    assert _reporter_names(trainer) == expected


def test_the_jsonl_reporter_receives_the_logs(tmp_path):
    args = make_args(tmp_path, report_to=["jsonl"], max_steps=4, logging_strategy="steps", logging_steps=2)
    Trainer(Classifier(), args, train_dataset=make_data(64)).train()
    lines = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [2, 4]


def test_incompatible_components_are_one_usage_error_listing_each_mismatch(tmp_path):
    plugin = ModuleType("fancy_components")

    @hookimpl
    def treadle_register_precisions(register):
        register("fancy", "trainer_kit:Nothing", compat={"backend": ("cuda", "xla")})

    @hookimpl
    def treadle_register_strategies(register):
        register("fancy_dp", "trainer_kit:Nothing", compat={"precision": ("fp32",), "backend": ("xla",)})

    plugin.treadle_register_precisions = treadle_register_precisions
    plugin.treadle_register_strategies = treadle_register_strategies
    get_plugin_manager().register_module(plugin, "fancy-components")
    with pytest.raises(UsageError) as raised:
        Trainer(Classifier(), make_args(tmp_path, precision="fancy", strategy="fancy_dp"))
    message = str(raised.value)
    assert "precision 'fancy'" in message and "works only with backend cuda, xla" in message
    assert "strategy 'fancy_dp'" in message and "precision fp32" in message and "backend xla" in message
