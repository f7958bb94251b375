"""What the loop knows about a run (``TrainerState``) and what hooks may change (``TrainerControl``).

``TrainerState`` is plain data: it is written into every checkpoint as JSON and read back on
resume, so it holds only JSON-able values. ``TrainerControl`` is the only channel through which a
lifecycle hook steers the loop. Neither module-level name imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union


class ExportableState:
    """A callback whose state survives a checkpoint (``restore_callback_states_from_checkpoint``).

    ``state()`` returns ``{"args": <constructor keywords>, "attributes": <mutable values>}``, all
    JSON-able; ``from_state`` builds an equal object back from it.
    """

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ExportableState":
        instance = cls(**state.get("args", {}))
        for name, value in state.get("attributes", {}).items():
            setattr(instance, name, value)
        return instance


@dataclass
class TrainerState:
    """Progress of a run: counters, the log history and the best checkpoint so far.

    ``epoch`` is fractional during an epoch (2.25 = a quarter into the third epoch).
    ``logging_steps`` / ``eval_steps`` / ``save_steps`` are the resolved step intervals of this
    run (a fraction given in the arguments becomes a number of steps here).
    """

    epoch: Optional[float] = None
    global_step: int = 0
    max_steps: int = 0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: Optional[int] = None
    num_train_epochs: int = 0
    num_input_tokens_seen: int = 0
    total_flos: float = 0
    log_history: list[dict[str, float]] = field(default_factory=list)
    best_metric: Optional[float] = None
    best_global_step: Optional[int] = None
    best_model_checkpoint: Optional[str] = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: Optional[str] = None
    trial_params: Optional[dict[str, Union[str, float, int, bool]]] = None
    stateful_callbacks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_to_json(self, json_path: Union[str, os.PathLike]) -> None:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        with open(json_path, "w", encoding="utf-8") as f:
            f.write(text)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainerState":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load_from_json(cls, json_path: Union[str, os.PathLike]) -> "TrainerState":
        with open(json_path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def set_intervals(self, args: Any, max_steps: int) -> None:
        """Resolve the logging / eval / save intervals; a value below 1 is a fraction of ``max_steps``."""
        self.logging_steps = resolve_interval(args.logging_steps, max_steps)
        eval_steps = args.eval_steps if args.eval_steps is not None else args.logging_steps
        self.eval_steps = resolve_interval(eval_steps, max_steps)
        self.save_steps = resolve_interval(args.save_steps, max_steps)


def resolve_interval(value: Union[int, float, None], max_steps: int) -> int:
    """``500 -> 500``; ``0.1`` with 1000 total steps -> ``100`` (at least 1)."""
    if value is None:
        return 0
    if 0 < value < 1:
        return max(1, math.ceil(max_steps * value))
    return int(value)


@dataclass
class TrainerControl:
    """Flags that lifecycle hooks set to steer the loop; the loop clears each one it acted on."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_training(self) -> None:
        self.should_training_stop = False

    def _new_epoch(self) -> None:
        self.should_epoch_stop = False

    def update_from(self, other: Any) -> None:
        """Copy the flags of another control object (what a TrainerCallback may return)."""
        for name in ("should_training_stop", "should_epoch_stop", "should_save", "should_evaluate", "should_log"):
            if hasattr(other, name):
                setattr(self, name, bool(getattr(other, name)))
