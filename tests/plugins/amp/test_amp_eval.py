"""--fp16_full_eval / --bf16_full_eval: evaluation in half, with any training precision."""

from __future__ import annotations

import pytest
import torch
from amp_kit import demo_trainer, make_args

from treadle.errors import UsageError
from treadle.markers import hookimpl


class EvalDtypes:
    """Records the dtype of the first layer's output in every evaluation forward."""

    def __init__(self) -> None:
        self.seen: list[torch.dtype] = []

    def attach(self, trainer) -> "EvalDtypes":
        def hook(module, inputs, output):
            if not module.training:
                self.seen.append(output.dtype)

        trainer.model.net[0].register_forward_hook(hook)
        return self


@pytest.mark.parametrize(("flag", "dtype"), [("fp16_full_eval", torch.float16), ("bf16_full_eval", torch.bfloat16)])
def test_full_eval_outside_training_converts_the_weights(tmp_path, flag, dtype):
    trainer = demo_trainer(make_args(tmp_path, **{flag: True}))
    assert trainer.precision.name == "fp32" and trainer.eval_precision.name == f"{flag[:4]}-true"
    reference = demo_trainer(make_args(tmp_path / "fp32")).evaluate()
    probe = EvalDtypes().attach(trainer)
    metrics = trainer.evaluate()
    assert set(probe.seen) == {dtype}
    assert {p.dtype for p in trainer.model.parameters()} == {dtype}  # converted, and it stays so
    assert metrics["eval_loss"] == pytest.approx(reference["eval_loss"], abs=0.02)
    assert metrics["eval_accuracy"] == pytest.approx(reference["eval_accuracy"], abs=0.02)
    predictions = trainer.predict(trainer.eval_dataset).predictions
    assert predictions.dtype == ("float16" if dtype == torch.float16 else "float32")  # bfloat16 reaches numpy as float32


def test_full_eval_during_training_leaves_the_trained_weights_alone(tmp_path):
    args = make_args(tmp_path, bf16=True, fp16_full_eval=True, max_steps=20, eval_strategy="steps", eval_steps=10)
    trainer = demo_trainer(args)
    probe = EvalDtypes().attach(trainer)
    trainer.train()
    assert probe.seen and set(probe.seen) == {torch.float16}  # the evaluations ran in float16 autocast
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}  # the master weights did not change dtype
    assert len([e for e in trainer.state.log_history if "eval_loss" in e]) == 2


def test_both_full_eval_flags_are_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="fp16_full_eval, bf16_full_eval: choose one"):
        make_args(tmp_path, fp16_full_eval=True, bf16_full_eval=True)
