"""The learning-rate schedules selected by ``--lr_scheduler_type``.

Each public function has the scheduler-factory signature of ``treadle_register_schedulers``::

    name(optimizer, *, num_warmup_steps, num_training_steps, **lr_scheduler_kwargs) -> LRScheduler

and follows the formula of the schedule type of the same name in the seed documents. All but
``reduce_lr_on_plateau`` are a ``LambdaLR`` whose multiplier is a small ``Multiplier`` object
rather than a closure: ``LambdaLR.state_dict()`` stores a callable object's ``__dict__``, so the
scheduler state of a checkpoint is plain JSON (numbers and strings), never a pickle.

An unknown key in ``lr_scheduler_kwargs`` is a ``UsageError`` that lists the keys the schedule
accepts, instead of a ``TypeError`` deep in the loop.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Optional

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from treadle.errors import UsageError

# ---------------------------------------------------------------------------------------------
# Multipliers: step -> factor applied to each parameter group's initial learning rate
# ---------------------------------------------------------------------------------------------


class Multiplier:
    """A learning-rate factor as a function of the optimizer step.

    Its attributes are its whole configuration and must stay JSON values: they are what
    ``LambdaLR`` saves in (and restores from) a checkpoint.
    """

    def __init__(self, **params: Any) -> None:
        self.__dict__.update(params)

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({fields})"


def _linear_warmup(step: int, num_warmup_steps: int) -> float:
    return step / max(1, num_warmup_steps)


def _decay_progress(step: int, num_warmup_steps: int, num_training_steps: int) -> float:
    """How far past the warmup the step is, as a fraction of the post-warmup steps."""
    return (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)


class Constant(Multiplier):
    def __call__(self, step: int) -> float:
        return 1.0


class WarmupConstant(Multiplier):
    """Linear warmup from 0, then 1."""

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return _linear_warmup(step, self.num_warmup_steps)
        return 1.0


class WarmupLinearDecay(Multiplier):
    """Linear warmup from 0 to 1, then linear decay to 0 at ``num_training_steps``."""

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return _linear_warmup(step, self.num_warmup_steps)
        remaining = self.num_training_steps - step
        return max(0.0, remaining / max(1, self.num_training_steps - self.num_warmup_steps))


class WarmupCosine(Multiplier):
    """Linear warmup, then ``num_cycles`` cosine waves from 1 down to ``min_lr_rate``."""

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return _linear_warmup(step, self.num_warmup_steps)
        progress = _decay_progress(step, self.num_warmup_steps, self.num_training_steps)
        wave = 0.5 * (1.0 + math.cos(2.0 * math.pi * self.num_cycles * progress))
        return max(0.0, self.min_lr_rate + (1.0 - self.min_lr_rate) * wave)


class WarmupCosineHardRestarts(Multiplier):
    """Linear warmup, then ``num_cycles`` half-cosine decays, each restarting at 1."""

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return _linear_warmup(step, self.num_warmup_steps)
        progress = _decay_progress(step, self.num_warmup_steps, self.num_training_steps)
        if progress >= 1.0:
            return 0.0
        phase = (self.num_cycles * progress) % 1.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * phase)))


class WarmupPolynomialDecay(Multiplier):
    """Linear warmup, then ``(lr_init - lr_end) * remaining**power + lr_end``, as a factor of ``lr_init``."""

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return _linear_warmup(step, self.num_warmup_steps)
        if step > self.num_training_steps:
            return self.lr_end / self.lr_init
        remaining = 1.0 - _decay_progress(step, self.num_warmup_steps, self.num_training_steps)
        lr = (self.lr_init - self.lr_end) * remaining**self.power + self.lr_end
        return lr / self.lr_init


class WarmupInverseSqrt(Multiplier):
    """Linear warmup, then ``1 / sqrt((step + timescale - num_warmup_steps) / timescale)``."""

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return _linear_warmup(step, self.num_warmup_steps)
        shift = self.timescale - self.num_warmup_steps
        return 1.0 / math.sqrt((step + shift) / self.timescale)


class ShiftedWarmupCosine(Multiplier):
    """The ``cosine_warmup_with_min_lr`` shape: the warmup never starts at 0.

    Warmup rises linearly from ``warmup_lr_rate`` to 1 over the warmup steps (from
    ``1 / num_warmup_steps`` when no rate is given, counting steps from one); the cosine part
    is shifted by one step so its first value is already below 1, and it ends at ``min_lr_rate``.
    """

    def __call__(self, step: int) -> float:
        warmup = float(self.num_warmup_steps)
        if step < warmup:
            if self.warmup_lr_rate is None:
                return (step + 1.0) / max(1.0, warmup)
            return self.warmup_lr_rate + (1.0 - self.warmup_lr_rate) * step / max(1.0, warmup - 1.0)
        progress = (step - warmup + 1.0) / max(1.0, float(self.num_training_steps) - warmup)
        wave = 0.5 * (1.0 + math.cos(2.0 * math.pi * self.num_cycles * progress))
        return max(0.0, self.min_lr_rate + (1.0 - self.min_lr_rate) * wave)


_WSD_SHAPES = ("linear", "cosine", "1-sqrt")


class WarmupStableDecay(Multiplier):
    """Warmup (from ``min_lr_ratio``), a flat stable phase at 1, a decay back to ``min_lr_ratio``."""

    def __call__(self, step: int) -> float:
        decay_start = self.num_warmup_steps + self.num_stable_steps
        if step < self.num_warmup_steps:
            progress = step / max(1, self.num_warmup_steps)
            shape = {
                "linear": progress,
                "cosine": 0.5 * (1.0 - math.cos(math.pi * progress)),
                "1-sqrt": 1.0 - math.sqrt(1.0 - progress),
            }[self.warmup_type]
        elif step < decay_start:
            return 1.0
        elif step < decay_start + self.num_decay_steps:
            progress = (step - decay_start) / max(1, self.num_decay_steps)
            shape = {
                "linear": 1.0 - progress,
                "cosine": 0.5 * (1.0 + math.cos(2.0 * math.pi * self.num_cycles * progress)),
                "1-sqrt": 1.0 - math.sqrt(progress),
            }[self.decay_type]
        else:
            return self.min_lr_ratio
        return max(0.0, self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape)


# ---------------------------------------------------------------------------------------------
# Factories (the registered names)
# ---------------------------------------------------------------------------------------------


def _scheduler_factory(build: Callable[..., LRScheduler]) -> Callable[..., LRScheduler]:
    """Turn an unknown ``lr_scheduler_kwargs`` key into a ``UsageError`` naming the valid ones."""
    accepted = [
        p.name
        for p in inspect.signature(build).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in {"num_warmup_steps", "num_training_steps"}
    ]

    @functools.wraps(build)
    def factory(optimizer: Optimizer, *, num_warmup_steps: int = 0, num_training_steps: Optional[int] = None, **kwargs: Any) -> LRScheduler:
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            valid = ", ".join(accepted) or "none"
            raise UsageError(
                f"--lr_scheduler_kwargs: the {build.__name__} schedule does not take {', '.join(unknown)}; "
                f"the keys it accepts are: {valid}."
            )
        return build(optimizer, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps, **kwargs)

    return factory


def _require_total(name: str, num_training_steps: Optional[int]) -> int:
    if num_training_steps is None:
        raise UsageError(f"the {name} schedule needs the total number of training steps (num_training_steps).")
    return int(num_training_steps)


def _min_lr_rate(name: str, optimizer: Optimizer, min_lr: Optional[float], min_lr_rate: Optional[float]) -> float:
    if min_lr is not None and min_lr_rate is not None:
        raise UsageError(f"--lr_scheduler_kwargs: {name} takes min_lr or min_lr_rate, not both.")
    if min_lr is not None:
        return float(min_lr) / optimizer.defaults["lr"]
    if min_lr_rate is None:
        raise UsageError(
            f"--lr_scheduler_kwargs: {name} needs min_lr (an absolute rate) or min_lr_rate (a fraction of the "
            f"initial rate), e.g. --lr_scheduler_kwargs '{{\"min_lr_rate\": 0.1}}'."
        )
    return float(min_lr_rate)


@_scheduler_factory
def linear(optimizer: Optimizer, *, num_warmup_steps: int, num_training_steps: Optional[int]) -> LRScheduler:
    """Linear warmup from 0 to the initial rate, then linear decay to 0."""
    total = _require_total("linear", num_training_steps)
    return LambdaLR(optimizer, WarmupLinearDecay(num_warmup_steps=int(num_warmup_steps), num_training_steps=total))


@_scheduler_factory
def cosine(optimizer: Optimizer, *, num_warmup_steps: int, num_training_steps: Optional[int], num_cycles: float = 0.5) -> LRScheduler:
    """Linear warmup, then a cosine from the initial rate to 0 (``num_cycles`` waves; 0.5 = one half-wave)."""
    total = _require_total("cosine", num_training_steps)
    multiplier = WarmupCosine(
        num_warmup_steps=int(num_warmup_steps), num_training_steps=total, num_cycles=float(num_cycles), min_lr_rate=0.0
    )
    return LambdaLR(optimizer, multiplier)


@_scheduler_factory
def cosine_with_restarts(
    optimizer: Optimizer, *, num_warmup_steps: int, num_training_steps: Optional[int], num_cycles: int = 1
) -> LRScheduler:
    """Linear warmup, then ``num_cycles`` cosine decays to 0, each one restarting at the initial rate."""
    total = _require_total("cosine_with_restarts", num_training_steps)
    multiplier = WarmupCosineHardRestarts(num_warmup_steps=int(num_warmup_steps), num_training_steps=total, num_cycles=num_cycles)
    return LambdaLR(optimizer, multiplier)


@_scheduler_factory
def polynomial(
    optimizer: Optimizer,
    *,
    num_warmup_steps: int,
    num_training_steps: Optional[int],
    lr_end: float = 1e-7,
    power: float = 1.0,
) -> LRScheduler:
    """Linear warmup, then a polynomial decay of degree ``power`` from the initial rate to ``lr_end``."""
    total = _require_total("polynomial", num_training_steps)
    lr_init = float(optimizer.defaults["lr"])
    if not lr_init > lr_end:
        raise UsageError(
            f"--lr_scheduler_kwargs: polynomial decay needs lr_end ({lr_end}) below the initial learning rate ({lr_init})."
        )
    multiplier = WarmupPolynomialDecay(
        num_warmup_steps=int(num_warmup_steps), num_training_steps=total, lr_init=lr_init, lr_end=float(lr_end), power=float(power)
    )
    return LambdaLR(optimizer, multiplier)


@_scheduler_factory
def constant(optimizer: Optimizer, *, num_warmup_steps: int, num_training_steps: Optional[int]) -> LRScheduler:
    """The initial rate throughout (warmup steps are ignored, as in the seeds)."""
    return LambdaLR(optimizer, Constant())


@_scheduler_factory
def constant_with_warmup(optimizer: Optimizer, *, num_warmup_steps: int, num_training_steps: Optional[int]) -> LRScheduler:
    """Linear warmup from 0, then the initial rate."""
    return LambdaLR(optimizer, WarmupConstant(num_warmup_steps=int(num_warmup_steps)))


@_scheduler_factory
def inverse_sqrt(
    optimizer: Optimizer, *, num_warmup_steps: int, num_training_steps: Optional[int], timescale: Optional[int] = None
) -> LRScheduler:
    """Linear warmup, then a decay proportional to one over the square root of the step.

    ``timescale`` defaults to the number of warmup steps (10 000 when there is no warmup).
    """
    if timescale is None:
        timescale = int(num_warmup_steps) or 10_000
    return LambdaLR(optimizer, WarmupInverseSqrt(num_warmup_steps=int(num_warmup_steps), timescale=int(timescale)))


@_scheduler_factory
def cosine_with_min_lr(
    optimizer: Optimizer,
    *,
    num_warmup_steps: int,
    num_training_steps: Optional[int],
    num_cycles: float = 0.5,
    min_lr: Optional[float] = None,
    min_lr_rate: Optional[float] = None,
) -> LRScheduler:
    """Like ``cosine``, but the cosine ends at ``min_lr`` (or ``min_lr_rate`` times the initial rate)."""
    total = _require_total("cosine_with_min_lr", num_training_steps)
    rate = _min_lr_rate("cosine_with_min_lr", optimizer, min_lr, min_lr_rate)
    multiplier = WarmupCosine(
        num_warmup_steps=int(num_warmup_steps), num_training_steps=total, num_cycles=float(num_cycles), min_lr_rate=rate
    )
    return LambdaLR(optimizer, multiplier)


@_scheduler_factory
def cosine_warmup_with_min_lr(
    optimizer: Optimizer,
    *,
    num_warmup_steps: int,
    num_training_steps: Optional[int],
    num_cycles: float = 0.5,
    min_lr: Optional[float] = None,
    min_lr_rate: Optional[float] = None,
    warmup_lr_rate: Optional[float] = None,
) -> LRScheduler:
    """Like ``cosine_with_min_lr``, but the warmup starts above 0 (at ``warmup_lr_rate``)."""
    total = _require_total("cosine_warmup_with_min_lr", num_training_steps)
    rate = _min_lr_rate("cosine_warmup_with_min_lr", optimizer, min_lr, min_lr_rate)
    multiplier = ShiftedWarmupCosine(
        num_warmup_steps=int(num_warmup_steps),
        num_training_steps=total,
        num_cycles=float(num_cycles),
        min_lr_rate=rate,
        warmup_lr_rate=None if warmup_lr_rate is None else float(warmup_lr_rate),
    )
    return LambdaLR(optimizer, multiplier)


@_scheduler_factory
def warmup_stable_decay(
    optimizer: Optimizer,
    *,
    num_warmup_steps: int,
    num_training_steps: Optional[int],
    num_decay_steps: Optional[int] = None,
    num_stable_steps: Optional[int] = None,
    warmup_type: str = "linear",
    decay_type: str = "cosine",
    min_lr_ratio: float = 0.0,
    num_cycles: float = 0.5,
) -> LRScheduler:
    """Warmup, a stable phase at the initial rate, then a decay of ``num_decay_steps``.

    The stable phase lasts ``num_stable_steps``, or by default whatever the total leaves after
    warmup and decay; steps past the decay stay at ``min_lr_ratio``.
    """
    if num_decay_steps is None:
        raise UsageError(
            "--lr_scheduler_kwargs: warmup_stable_decay needs num_decay_steps, "
            "e.g. --lr_scheduler_kwargs '{\"num_decay_steps\": 100}'."
        )
    for label, shape in (("warmup_type", warmup_type), ("decay_type", decay_type)):
        if shape not in _WSD_SHAPES:
            raise UsageError(f"--lr_scheduler_kwargs: {label} must be one of {', '.join(_WSD_SHAPES)}, not {shape!r}.")
    if num_stable_steps is None:
        if num_training_steps is None:
            raise UsageError("warmup_stable_decay needs num_stable_steps or the total number of training steps.")
        num_stable_steps = int(num_training_steps) - int(num_warmup_steps) - int(num_decay_steps)
        if num_stable_steps < 0:
            raise UsageError(
                f"warmup_stable_decay: warmup ({num_warmup_steps}) plus decay ({num_decay_steps}) steps exceed the "
                f"{num_training_steps} training steps; lower num_decay_steps or the warmup."
            )
    multiplier = WarmupStableDecay(
        num_warmup_steps=int(num_warmup_steps),
        num_stable_steps=int(num_stable_steps),
        num_decay_steps=int(num_decay_steps),
        warmup_type=warmup_type,
        decay_type=decay_type,
        min_lr_ratio=float(min_lr_ratio),
        num_cycles=float(num_cycles),
    )
    return LambdaLR(optimizer, multiplier)


_PLATEAU_KEYS = [
    name
    for name, p in inspect.signature(ReduceLROnPlateau).parameters.items()
    if name != "optimizer" and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
]


def reduce_lr_on_plateau(
    optimizer: Optimizer, *, num_warmup_steps: int = 0, num_training_steps: Optional[int] = None, **lr_scheduler_kwargs: Any
) -> LRScheduler:
    """Keep the rate until the evaluation metric stops improving, then lower it (torch's ``ReduceLROnPlateau``).

    Warmup is ignored. The loop must call ``scheduler.step(metric)`` after each evaluation
    instead of ``step()`` after each optimizer step. ``lr_scheduler_kwargs`` go to
    ``ReduceLROnPlateau`` (``mode``, ``factor``, ``patience``, ``threshold``, ``min_lr``, ...).
    """
    unknown = sorted(set(lr_scheduler_kwargs) - set(_PLATEAU_KEYS))
    if unknown:
        raise UsageError(
            f"--lr_scheduler_kwargs: reduce_lr_on_plateau does not take {', '.join(unknown)}; "
            f"the keys it accepts are: {', '.join(_PLATEAU_KEYS)}."
        )
    scheduler = ReduceLROnPlateau(optimizer, **lr_scheduler_kwargs)
    scheduler.needs_metric = True  # the loop steps it with the evaluation metric (treadle.components.scheduler_needs_metric)
    return scheduler
