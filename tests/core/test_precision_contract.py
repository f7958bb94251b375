"""The Precision contract through the real loop, with the ``fixture-scaling`` precision of
treadle-fixture-precision (a hand-written loss scaler) and its eval precision ``fixture-eval``.

The loop must give the precision its device before anything else, convert the model once (not
the strategy), leave overflowing gradients to the scaler, count the steps it skips, call
``skip_step`` for a step the NaN policy drops, log and checkpoint the scale, and resume exactly.
``agree_on_overflow``: a reducer handed over by a sharding strategy makes another process's overflow skip
the step here too.
"""

from __future__ import annotations

import json
import math

import pytest

from treadle.args import TrainingArguments
from treadle.builtin.demo_task import build as build_demo
from treadle.components import Precision
from treadle.errors import UsageError
from treadle.markers import hookimpl
from treadle.trainer import Trainer
from treadle.verify_resume import verify_resume


@pytest.fixture(autouse=True)
def _fixture_precision_only(installed_plugins, monkeypatch):
    monkeypatch.setenv("TREADLE_PLUGINS", "fixture_precision")


def scaled_args(output_dir, **overrides) -> TrainingArguments:
    return TrainingArguments(**{
        "output_dir": str(output_dir), "precision": "fixture-scaling", "nan_inf_policy": "skip_step",
        "max_steps": 10, "per_device_train_batch_size": 32, "per_device_eval_batch_size": 200, "learning_rate": 2e-3,
        "seed": 11, "report_to": ["none"], "disable_tqdm": True, "save_strategy": "no", "logging_steps": 5,
        **overrides,
    })


class Disturb:
    """Multiplies the training loss by ``factors[step]`` at those optimizer steps (1-based)."""

    def __init__(self, factors: dict[int, float]) -> None:
        self.factors, self.factor, self.hooked = factors, None, False

    @hookimpl
    def treadle_on_step_begin(self, trainer, state) -> None:
        self.factor = self.factors.get(state.global_step + 1)
        if not self.hooked:
            trainer.model.register_forward_hook(self._scale_loss)
            self.hooked = True

    def _scale_loss(self, module, inputs, output):
        if self.factor is None or not module.training:
            return output
        return {**output, "loss": output["loss"] * self.factor}


NAN_AT_3_OVERFLOW_AT_7 = {3: math.nan, 7: 1e36}
"""Step 3: the loss is NaN (the policy drops it). Step 7: the loss is finite but its scaled
gradients overflow float32 (the precision skips it)."""


def disturbed_demo(args):
    parts = build_demo(args)
    parts.callbacks = [Disturb(NAN_AT_3_OVERFLOW_AT_7)]
    return parts


def run(args, task=disturbed_demo) -> Trainer:
    parts = task(args)
    trainer = Trainer(model=parts.model, args=args, train_dataset=parts.train_dataset, eval_dataset=parts.eval_dataset,
                      compute_metrics=parts.compute_metrics, callbacks=parts.callbacks)
    trainer.train()
    return trainer


def test_the_loop_sets_up_converts_and_lets_the_scaler_skip(tmp_path):
    trainer = run(scaled_args(tmp_path))
    precision = trainer.precision
    assert precision.device.type == "cpu"
    assert precision.calls == [("setup", "cpu"), ("convert_module", "GlyphClassifier")]  # once: the strategy did not convert again
    assert precision.skip_calls == 1 and precision.overflows == 1
    first, second = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert first["skipped_steps"] == 1 and second["skipped_steps"] == 1  # the dropped step, then the overflow
    # halved at step 3 (dropped), doubled at step 5 (4th good step), halved at 7 (overflow), doubled at 10
    assert first["fixture_scale"] == 4096.0 and second["fixture_scale"] == precision.scale == 4096.0
    assert precision.good_steps == 8
    assert trainer.state.log_history[-1]["train_skipped_steps"] == 2
    trainer.evaluate()
    assert [name for name, _ in precision.calls].count("convert_module") == 1  # not again for evaluation


def test_the_scale_is_checkpointed_and_the_resume_is_exact(tmp_path):
    report = verify_resume(scaled_args(tmp_path / "unused"), stop_at=5, task=disturbed_demo, workdir=tmp_path)
    assert report.identical, str(report)

    run(scaled_args(tmp_path / "saved", save_strategy="steps", save_steps=5))
    saved = json.loads((tmp_path / "saved" / "checkpoint-5" / "precision.json").read_text())["tree"]
    assert saved == {"scale": 4096.0, "good_steps": 4, "overflows": 0, "skip_calls": 1}
    assert json.loads((tmp_path / "saved" / "checkpoint-10" / "precision.json").read_text())["tree"]["overflows"] == 1


FULL_EVAL = {"fixture_precision_full_eval": True}
"""The fixture's own full-evaluation flag: its catalog row names the eval precision fixture-eval."""


def test_an_eval_precision_from_a_catalog_row_serves_evaluation(tmp_path):
    args = scaled_args(tmp_path, plugin_options=FULL_EVAL, eval_strategy="steps", eval_steps=5)
    trainer = run(args)
    eval_precision = trainer.eval_precision
    assert eval_precision.name == "fixture-eval" and eval_precision.device.type == "cpu"
    assert eval_precision.eval_contexts == 2 * 10  # two evaluations of 2000 samples in batches of 200
    assert eval_precision.converted == 0  # during training the trained weights are not converted
    trainer.evaluate()
    assert eval_precision.converted == 1 and eval_precision.eval_contexts == 30
    trainer.evaluate()
    assert eval_precision.converted == 1  # once per model


def test_an_eval_precision_must_convert_in_place(tmp_path, monkeypatch):
    from treadle_fixture_precision.precision import CountingEvalPrecision

    monkeypatch.setattr(CountingEvalPrecision, "convert_module", lambda self, model: type(model)())
    args = scaled_args(tmp_path, plugin_options=FULL_EVAL)
    parts = build_demo(args)
    trainer = Trainer(model=parts.model, args=args, eval_dataset=parts.eval_dataset)
    with pytest.raises(UsageError, match="an eval precision must convert the model in place"):
        trainer.evaluate()


class OtherProcessOverflows:
    """Hands the precision a reducer, as a sharding strategy's ``setup_model`` would, that stands in for a
    second process whose part of the gradients overflows at optimizer step ``at`` (this process's stay finite).

    It records each call (the step and this process's flag) and the first weight after every step."""

    def __init__(self, at: int) -> None:
        self.at, self.step, self.calls, self.weights, self.scales = at, 0, [], {}, {}

    @hookimpl
    def treadle_on_train_begin(self, trainer) -> None:
        assert trainer.precision.agree_on_overflow(self.reduce_max) is True

    @hookimpl
    def treadle_on_step_begin(self, state) -> None:
        self.step = state.global_step + 1

    @hookimpl
    def treadle_on_step_end(self, trainer, state) -> None:
        self.weights[state.global_step] = next(trainer.model.parameters()).detach().clone()
        self.scales[state.global_step] = trainer.precision.scale

    def reduce_max(self, flags):
        import torch

        self.calls.append((self.step, flags.tolist()))
        other = torch.full_like(flags, 1.0 if self.step == self.at else 0.0)
        return torch.maximum(flags, other)


def test_a_precision_that_agrees_on_overflows_skips_when_another_process_overflowed(tmp_path):
    args = scaled_args(tmp_path, max_steps=6, logging_steps=6)
    parts = build_demo(args)
    other = OtherProcessOverflows(at=4)
    trainer = Trainer(model=parts.model, args=args, train_dataset=parts.train_dataset, callbacks=[other])
    trainer.train()
    precision = trainer.precision
    assert [step for step, _ in other.calls] == [1, 2, 3, 4, 5, 6]  # once per step, after unscaling
    assert all(flags == [0.0] for _, flags in other.calls)  # this process's gradients were finite throughout
    assert precision.overflows == 1 and precision.good_steps == 5
    assert trainer.state.global_step == 6  # a skipped step still counts as a step
    assert trainer.state.log_history[0]["skipped_steps"] == 1
    # halved at step 4 for the other process's overflow, doubled at step 5 (the fixture's 4th good step)
    assert other.scales == {1: 4096.0, 2: 4096.0, 3: 4096.0, 4: 2048.0, 5: 4096.0, 6: 4096.0}
    assert bool((other.weights[4] == other.weights[3]).all())  # step 4 left the weights alone
    assert not bool((other.weights[5] == other.weights[4]).all())


class _Plain(Precision):
    name = "plain"


class _ScalesWithoutAgreeing(Precision):
    name = "scales-alone"
    scales_loss = True


def test_by_default_only_a_precision_that_does_not_scale_the_loss_agrees():
    """A loss scaler that does not implement ``agree_on_overflow`` says so, and a sharding strategy refuses it."""
    assert _Plain(None).agree_on_overflow(lambda flags: flags) is True
    assert _ScalesWithoutAgreeing(None).agree_on_overflow(lambda flags: flags) is False
