"""The precisions of treadle-amp: mixed (autocast, float32 weights) and true (half weights).

``bf16`` and ``fp16`` keep the weights, gradients and optimizer state in float32 and run the
forward pass under ``torch.autocast`` in the half dtype; ``fp16`` adds a loss scaler, because
float16 gradients underflow without one. ``bf16-true`` / ``fp16-true`` convert the weights
themselves (half the memory of the parameters, gradients and optimizer state) and still run
under autocast, so float32 inputs meet half weights without a dtype error.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional

import torch

from treadle.components import Precision
from treadle_amp.capability import check_autocast, check_grad_scaler, check_half_precision_backend
from treadle_amp.scaler import AgreeingGradScaler

logger = logging.getLogger("treadle.amp")

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class _AutocastPrecision(Precision):
    """The forward (and evaluation) pass under ``torch.autocast`` on the run's device, in ``dtype``."""

    def __init__(self, args: Any, dtype: str = "bfloat16") -> None:
        super().__init__(args)
        self.dtype = DTYPES[dtype]
        self.compute_dtype = self.dtype  # the contract's name for it (FSDP2's mixed-precision policy reads it)
        self._autocast: Optional[functools.partial] = None

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        check_half_precision_backend(self.args.half_precision_backend, device, self.name)
        check_autocast(device, self.dtype, self.name)
        self._autocast = functools.partial(torch.autocast, device_type=device.type, dtype=self.dtype)

    def forward_context(self) -> Any:
        if self._autocast is None:  # used before the loop's setup (a direct call): the host device
            self.setup(torch.device("cpu"))
        return self._autocast()


class MixedPrecision(_AutocastPrecision):
    """``bf16`` (and the base of ``fp16``): autocast in the half dtype, float32 weights."""

    name = "bf16"


class TruePrecision(_AutocastPrecision):
    """``bf16-true`` / ``fp16-true``: the model's floating-point weights and buffers converted to ``dtype``."""

    def __init__(self, args: Any, dtype: str = "bfloat16") -> None:
        super().__init__(args, dtype)
        self.name = "fp16-true" if self.dtype == torch.float16 else "bf16-true"

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        epsilon = getattr(self.args, "adam_epsilon", None)
        trains = self.args.precision in ("fp16-true", "16-true")  # not when it only serves --fp16_full_eval
        if trains and self.dtype == torch.float16 and "adam" in str(self.args.optim) and epsilon is not None and epsilon < 1e-7:
            logger.warning(
                "fp16-true: --adam_epsilon %g is zero in float16, so Adam divides by zero where a gradient is zero "
                "and the weights become NaN; use --adam_epsilon 1e-4, or bf16-true", epsilon,
            )

    def convert_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(dtype=self.dtype)  # in place; integer buffers keep their dtype


class Fp16MixedPrecision(MixedPrecision):
    """``fp16``: float16 autocast with ``torch.amp.GradScaler`` on the run's device.

    The loss is multiplied by the scale before backward; before clipping and stepping the
    gradients are divided by it again. A step whose gradients overflowed (inf / NaN) is skipped
    and the scale halved; after ``growth_interval`` good steps it doubles. Skipped steps are
    counted (``overflow_steps``, in the checkpoint) and reported: a warning each, and the loop
    logs them as ``skipped_steps`` next to ``loss_scale``. Under a sharding strategy the overflow
    flags are reduced over the processes (``agree_on_overflow``), so all of them skip together.
    """

    name = "fp16"
    scales_loss = True

    def __init__(self, args: Any, dtype: str = "float16") -> None:
        super().__init__(args, dtype)
        self.scaler: Optional[AgreeingGradScaler] = None
        self._reduce_max: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self.overflow_steps = 0
        self._unscaled = False
        self._scale = 0.0
        self._pending: Optional[dict[str, Any]] = None

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        check_grad_scaler(device, self.name)
        self.scaler = AgreeingGradScaler(
            device.type, reduce_max=self._reduce_max, init_scale=self.args.amp_init_scale,
            growth_interval=self.args.amp_growth_interval,
        )
        if self._pending is not None:  # a checkpoint was loaded before the device was known
            self.load_state_dict(self._pending)
        self._scale = self.scaler.get_scale()

    def agree_on_overflow(self, reduce_max: Callable[[torch.Tensor], torch.Tensor]) -> bool:
        """Reduce the scaler's found-inf flags with ``reduce_max`` after each unscaling (a sharding strategy's call)."""
        self._reduce_max = reduce_max
        if self.scaler is not None:
            self.scaler.reduce_max = reduce_max
        return True

    def _ready(self) -> AgreeingGradScaler:
        if self.scaler is None:
            self.setup(torch.device("cpu"))
        return self.scaler

    def backward(self, loss: torch.Tensor) -> None:
        self._ready().scale(loss).backward()

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._unscaled:  # GradScaler refuses a second unscale_ in one step
            self._ready().unscale_(optimizer)
            self._unscaled = True

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> bool:
        scaler = self._ready()
        scaler.step(optimizer)  # unscales first if clipping did not; skips the step on inf / NaN
        scaler.update()
        return self._after_update("gradients overflowed (inf or NaN in float16)")

    def skip_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The NaN policy dropped this step: the scaler sees it as the overflow it is."""
        scaler = self._ready()
        before = self._scale
        self.unscale_gradients(optimizer)  # records whether the gradients are finite
        scaler.update()
        if scaler.get_scale() >= before:  # finite gradients under a non-finite loss: still back off
            scaler.update(new_scale=before * scaler.get_backoff_factor())
        self._after_update("the NaN/Inf policy dropped the step")

    def _after_update(self, why: str) -> bool:
        """Note the new scale; True when the step was taken (the scale did not fall)."""
        self._unscaled = False
        before, self._scale = self._scale, self.scaler.get_scale()
        if self._scale >= before:
            return True
        self.overflow_steps += 1
        logger.warning("fp16: optimizer step skipped, %s; loss scale lowered from %g to %g", why, before, self._scale)
        return False

    def log_values(self) -> dict[str, float]:
        return {"loss_scale": self._scale}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: GradScaler's state is numbers only (scale, growth tracker, factors)."""
        return {"scaler": self._ready().state_dict(), "overflow_steps": self.overflow_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return  # a checkpoint of another precision: start with a fresh scale
        if self.scaler is None:
            self._pending = state
            return
        self._pending = None
        self.scaler.load_state_dict(state["scaler"])
        self.overflow_steps = int(state.get("overflow_steps", 0))
        self._scale = self.scaler.get_scale()
        self._unscaled = False
