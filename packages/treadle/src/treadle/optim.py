"""Optimizer and learning-rate scheduler creation from the registries (``--optim``, ``--lr_scheduler_type``).

``Trainer.create_optimizer`` / ``create_scheduler`` are the overridable entry points; the work is
here so the loop's file stays about the loop. An optimizer factory (registered with
``treadle_register_optimizers``) returns ``(optimizer class, keyword arguments)``; a scheduler
factory returns the scheduler for an optimizer, the warmup and the number of steps.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from treadle.errors import UsageError
from treadle.flow import option_value
from treadle.plugins import get_plugin_manager


def parameter_groups(model: Any, decay_names: set[str], weight_decay: float) -> list[dict[str, Any]]:
    """Two groups of trainable parameters: with weight decay (``decay_names``) and without."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if n in decay_names], "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if n not in decay_names], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise UsageError("the model has no trainable parameter (all have requires_grad=False)")
    return groups


def optimizer_class_and_kwargs(args: Any, model: Any = None) -> tuple[type, dict[str, Any]]:
    """The optimizer class and keyword arguments the registered ``--optim`` name stands for."""
    factory = get_plugin_manager().resolve("optimizer", option_value(args.optim), args).load()
    return factory(args, model)


def build_optimizer(optimizer_cls: Any, kwargs: dict[str, Any], groups: list[dict[str, Any]], *, given: str) -> Any:
    """``optimizer_cls(groups, **kwargs)``; a ``"params"`` key in ``kwargs`` replaces the groups
    (GaLore / APOLLO bring their own, LOMO takes the model). A rejected option is the user's to
    fix: one message naming ``given`` (how the optimizer was chosen)."""
    kwargs = dict(kwargs)  # the factory's (or the user's) dict stays as it was
    params = kwargs.pop("params", groups)
    try:
        return optimizer_cls(params, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"{given}: {getattr(optimizer_cls, '__name__', optimizer_cls)} rejected its options "
            f"{kwargs}: {exc}. Fix the value in --optim_args (name=value,...) or choose another --optim"
        ) from exc


def build_scheduler(args: Any, optimizer: Any, num_training_steps: int) -> Any:
    """The ``--lr_scheduler_type`` schedule of ``optimizer`` over ``num_training_steps`` (with warmup)."""
    factory = get_plugin_manager().resolve("scheduler", option_value(args.lr_scheduler_type), args).load()
    kwargs: Optional[Any] = args.lr_scheduler_kwargs or {}
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs)
    return factory(optimizer, num_warmup_steps=args.get_warmup_steps(num_training_steps),
                   num_training_steps=num_training_steps, **kwargs)
