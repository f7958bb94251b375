"""The loop calls a strategy's or precision's own step operations, and torch directly only for defaults.

Where neither the strategy nor its precision changes ``backward``, clipping, ``optimizer_step``,
``zero_grad`` or the forward context, the loop makes the torch call their defaults end in (fewer
calls per step). These tests pin both halves: every override is still called once per step, and
the direct path gives the same weights as going through the components.
"""

from __future__ import annotations

import contextlib

import torch
from trainer_kit import Classifier, identical_weights, make_args, make_data, weights
from treadle.builtin.fp32 import Fp32Precision
from treadle.builtin.single import SingleDeviceStrategy
from treadle.trainer import Trainer

CALLS: dict[str, int] = {}


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


class CountingPrecision(Fp32Precision):
    """fp32 arithmetic, but every step operation is an override that counts its calls."""

    name = "counting"

    def forward_context(self):
        _count("forward_context")
        return contextlib.nullcontext()

    def backward(self, loss):
        _count("precision.backward")
        super().backward(loss)

    def unscale_gradients(self, optimizer):
        _count("unscale_gradients")

    def optimizer_step(self, optimizer):
        _count("precision.optimizer_step")
        return super().optimizer_step(optimizer)


class CountingStrategy(SingleDeviceStrategy):
    """The single-device strategy with counting ``clip_grad_norm`` and ``zero_grad`` overrides."""

    def clip_grad_norm(self, model, optimizer, max_norm):
        _count("strategy.clip_grad_norm")
        return super().clip_grad_norm(model, optimizer, max_norm)

    def zero_grad(self, optimizer):
        _count("strategy.zero_grad")
        super().zero_grad(optimizer)


def _train(tmp_path, **overrides) -> Trainer:
    torch.manual_seed(0)
    args = make_args(tmp_path, max_steps=6, max_grad_norm=0.5, optim="adamw_torch", **overrides)
    trainer = Trainer(model=Classifier(), args=args, train_dataset=make_data(64))
    trainer.train()
    return trainer


def test_overridden_step_operations_are_called_once_per_step(tmp_path):
    CALLS.clear()
    _train(tmp_path, precision=f"{__name__}:CountingPrecision", strategy=f"{__name__}:CountingStrategy")
    assert CALLS == {
        "forward_context": 6,
        "precision.backward": 6,
        "strategy.clip_grad_norm": 6,
        "unscale_gradients": 6,
        "precision.optimizer_step": 6,
        "strategy.zero_grad": 6,
    }


def test_an_override_on_the_instance_is_called_too(tmp_path):
    CALLS.clear()
    torch.manual_seed(0)
    trainer = Trainer(model=Classifier(), args=make_args(tmp_path, max_steps=3, max_grad_norm=0.5), train_dataset=make_data(64))
    default_zero_grad = trainer.strategy.zero_grad

    def zero_grad(optimizer):
        _count("instance zero_grad")
        default_zero_grad(optimizer)

    trainer.strategy.zero_grad = zero_grad
    trainer.train()
    assert CALLS == {"instance zero_grad": 3}


def test_direct_torch_calls_train_exactly_like_the_components(tmp_path):
    direct = _train(tmp_path / "direct")
    routed = _train(
        tmp_path / "routed",
        precision=f"{__name__}:CountingPrecision",
        strategy=f"{__name__}:CountingStrategy",
    )
    assert identical_weights(weights(direct.model), weights(routed.model))
    assert float(direct._grad_norm) == float(routed._grad_norm)
