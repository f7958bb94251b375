"""``--debug underflow_overflow``: find the first module whose forward produces inf or nan.

A forward hook on every submodule records one *frame* per call: the module's name and class, and
the smallest and largest absolute value of its weights, inputs and outputs. The last frames are
kept in a ring. As soon as a module's output holds an inf or a nan, training stops with a
``TreadleError`` that names that module, the batch, and prints the frames before it, so the
values can be read as they grew (the same idea as transformers' ``DebugUnderflowOverflow``).

The hooks cost a reduction per tensor per module and a host sync per check: use it to debug.
"""

from __future__ import annotations

import collections
from typing import Any, Optional

import torch
from torch import nn

from treadle.errors import TreadleError

FRAMES_KEPT = 21
"""Frames printed before the first one with inf / nan (as transformers' default)."""


def _tensors(value: Any, prefix: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    if isinstance(value, (tuple, list)):
        return [item for i, v in enumerate(value) for item in _tensors(v, f"{prefix}[{i}]")]
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _tensors(v, f"{prefix}[{k}]")]
    return []


def _summary(name: str, tensor: torch.Tensor) -> str:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return f"{'':>10} {'':>10} {name} ({tensor.dtype})"
    values = tensor.detach().abs()
    return f"{values.min().item():10.3e} {values.max().item():10.3e} {name}"


def _not_finite(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.numel() > 0 and not bool(torch.isfinite(tensor).all())


class OverflowDetector:
    """Hooks ``model``'s submodules; ``remove()`` takes them off again."""

    def __init__(self, model: nn.Module, frames_kept: int = FRAMES_KEPT) -> None:
        self.frames: collections.deque[str] = collections.deque(maxlen=frames_kept)
        self.batch = -1
        self.names = {module: name or type(model).__name__ for name, module in model.named_modules()}
        self._handles = [model.register_forward_pre_hook(self._new_batch)]
        self._handles += [module.register_forward_hook(self._check) for module in model.modules()]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _new_batch(self, module: nn.Module, inputs: Any) -> None:
        self.batch += 1
        self.frames.append(f"{'':>10} {'':>10} --- batch {self.batch} ---")

    def _check(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        name = f"{self.names.get(module, '?')} {type(module).__name__}"
        lines = [f"{'abs min':>10} {'abs max':>10} {name}"]
        for pname, param in module.named_parameters(recurse=False):
            lines.append(_summary(pname, param))
        input_tensors = _tensors(inputs, "input")
        output_tensors = _tensors(outputs, "output")
        lines += [_summary(n, t) for n, t in input_tensors + output_tensors]
        self.frames.append("\n".join(lines))
        bad = next((n for n, t in output_tensors if _not_finite(t)), None)
        if bad is None:
            return
        came_in_bad = next((n for n, t in input_tensors if _not_finite(t)), None)
        origin = f"its {came_in_bad} already held inf/nan" if came_in_bad else "its inputs were finite: it produced them"
        raise TreadleError(
            f"--debug underflow_overflow: inf/nan in {bad} of module {name!r} at batch {self.batch} ({origin}). "
            f"The last {len(self.frames)} frames, oldest first (abs min / abs max of weights, inputs, outputs):\n"
            + "\n".join(self.frames)
        )


def detector_for(model: nn.Module, debug: Optional[list[str]]) -> Optional[OverflowDetector]:
    """An ``OverflowDetector`` on ``model`` when ``--debug`` has ``underflow_overflow``, else None."""
    return OverflowDetector(model) if debug and "underflow_overflow" in debug else None
