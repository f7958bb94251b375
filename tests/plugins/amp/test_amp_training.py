"""Each precision trains the demo task on CPU: the loss falls and the weights differ from fp32's."""

from __future__ import annotations

import pytest
import torch
from amp_kit import demo_trainer, losses, make_args, weights

from treadle_amp.precision import Fp16MixedPrecision, MixedPrecision, TruePrecision


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    """The reference: the same run in float32 (weights and logged losses)."""
    from treadle.plugins import reset_plugin_manager

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", "1")
        reset_plugin_manager()
        trainer = demo_trainer(make_args(tmp_path_factory.mktemp("fp32")))
        trainer.train()
    reset_plugin_manager()
    return weights(trainer.model), losses(trainer)


CASES = {
    "bf16": ({"bf16": True}, MixedPrecision, torch.float32),
    "fp16": ({"fp16": True}, Fp16MixedPrecision, torch.float32),
    "bf16-true": ({"precision": "bf16-true"}, TruePrecision, torch.bfloat16),
    # float16 weights: Adam's default epsilon (1e-8) is zero in float16; the README says so too
    "fp16-true": ({"precision": "fp16-true", "adam_epsilon": 1e-4}, TruePrecision, torch.float16),
}


@pytest.mark.parametrize("case", CASES)
def test_precision_trains_the_demo_task(tmp_path, fp32_run, case):
    fp32_weights, fp32_losses = fp32_run
    overrides, cls, weight_dtype = CASES[case]
    trainer = demo_trainer(make_args(tmp_path, **overrides))
    assert type(trainer.precision) is cls and trainer.precision.device == torch.device("cpu")
    trainer.train()
    logged = losses(trainer)
    assert len(logged) == 4 and all(torch.isfinite(torch.tensor(logged)))
    assert logged[-1] < logged[0] - 0.05, logged
    trained = weights(trainer.model)
    assert {v.dtype for v in trained.values()} == {weight_dtype}
    assert trained.keys() == fp32_weights.keys()
    assert not all(torch.equal(trained[k].float(), fp32_weights[k]) for k in trained)
    # half precision, not a different training: the losses follow the fp32 run's closely
    if "adam_epsilon" not in overrides:  # (fp16-true trains with another epsilon)
        assert all(abs(a - b) < 0.02 for a, b in zip(logged, fp32_losses)), (logged, fp32_losses)


def test_autocast_really_runs_the_forward_in_half(tmp_path):
    seen = []
    trainer = demo_trainer(make_args(tmp_path, bf16=True, max_steps=2))
    trainer.model.net[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    trainer.train()
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert trainer.model.net[0].weight.dtype == torch.float32  # master weights


def test_fp16_logs_the_loss_scale(tmp_path):
    trainer = demo_trainer(make_args(tmp_path, fp16=True, max_steps=10, logging_steps=5))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["loss_scale"] for entry in logged] == [65536.0, 65536.0]
    assert "skipped_steps" not in logged[0]
