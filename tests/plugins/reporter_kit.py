"""Shared by the reporter plugins' tests (tensorboard, wandb, mlflow): a small real run of the demo task.

Each of those test directories puts this folder on ``sys.path`` in its conftest and loads only
its own plugin through its entry point, as a user's ``--report_to`` would.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from treadle.args import TrainingArguments
from treadle.builtin.demo_task import Accuracy, GlyphClassifier, GlyphDataset, make_glyphs
from treadle.markers import hookimpl
from treadle.plugins import reset_plugin_manager
from treadle.trainer import Trainer


def only_plugin(monkeypatch: Any, name: str) -> Iterator[None]:
    """Body of an autouse fixture: entry points load, restricted to the plugin ``name``."""
    monkeypatch.delenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TREADLE_PLUGINS", name)
    reset_plugin_manager()
    yield
    reset_plugin_manager()


def demo_args(output_dir: Any, report_to: str, **overrides: Any) -> TrainingArguments:
    values: dict[str, Any] = dict(
        output_dir=str(output_dir), report_to=[report_to], max_steps=8, logging_steps=2, eval_strategy="steps",
        eval_steps=4, save_strategy="no", per_device_train_batch_size=16, per_device_eval_batch_size=64,
        learning_rate=2e-3, disable_tqdm=True, seed=0,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def demo_trainer(args: TrainingArguments, callbacks: tuple = ()) -> Trainer:
    """The demo task's classifier on 256 training and 128 evaluation glyphs (a few seconds on a CPU)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = GlyphClassifier()
    train = GlyphDataset(*make_glyphs(256, args.seed, 0))
    evaluation = GlyphDataset(*make_glyphs(128, args.seed, 1))
    return Trainer(model, args, train_dataset=train, eval_dataset=evaluation, compute_metrics=Accuracy(), callbacks=list(callbacks))


def logged(trainer: Trainer, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every entry of ``key`` in the trainer's log history (what a reporter was given)."""
    return [(entry["step"], float(entry[key])) for entry in trainer.state.log_history if key in entry]


class RaiseAtStep:
    """Breaks the training at the end of ``step`` (a crash the reporters must see)."""

    def __init__(self, step: int, exc: type = RuntimeError) -> None:
        self.step, self.exc = step, exc

    @hookimpl
    def treadle_on_step_end(self, state: Any) -> None:
        if state.global_step == self.step:
            raise self.exc(f"broken at step {self.step}")
