"""``auto_find_batch_size``: what lets a training attempt that ran out of memory be retried cleanly.

An attempt can fail after some optimizer steps (a longer batch, a bigger evaluation), when the
weights, an optimizer passed to the Trainer and the random generators have already moved on.
``StartingPoint`` records them before the first attempt and puts them back before each retry,
so the retry is the run that the smaller batch size would have been from the start.

A resumed run starts its search from the batch size the checkpoint recorded, as the run that
wrote it had already found that one to fit.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

from treadle.checkpoint import run_state
from treadle.state import TrainerState


class StartingPoint:
    """The weights, an optimizer's and a scheduler's state, the precision's state (a loss scale) and
    the RNG states, as they are now.

    The weights are copied to the CPU, so a retry after an out-of-memory error does not hold a
    second copy on the device. Pass the optimizer and scheduler given to the Trainer (or None):
    the ones the Trainer creates are created afresh for every attempt anyway.
    """

    def __init__(self, trainer: Any, model: Any, optimizer: Any = None, scheduler: Any = None) -> None:
        self._trainer, self._model, self._optimizer, self._scheduler = trainer, model, optimizer, scheduler
        self.weights = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
        self.optimizer_state = _state_copy(optimizer)
        self.scheduler_state = _state_copy(scheduler)
        self.rng = run_state.capture_rng_state(trainer)
        self.precision_state = copy.deepcopy(trainer.precision.state_dict())  # a loss scale moves with the steps too

    def restore(self) -> None:
        self._model.load_state_dict(self.weights)
        self._model.zero_grad(set_to_none=True)
        if self._optimizer is not None:
            self._optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
        if self._scheduler is not None:
            self._scheduler.load_state_dict(copy.deepcopy(self.scheduler_state))
        run_state.restore_rng_state(self._trainer, self.rng)
        self._trainer.precision.load_state_dict(copy.deepcopy(self.precision_state))


def _state_copy(component: Any) -> Optional[dict[str, Any]]:
    return None if component is None else copy.deepcopy(component.state_dict())


def recorded_batch_size(checkpoint_dir: Path, state_file: str) -> Optional[int]:
    """The per-device batch size the run that wrote ``checkpoint_dir`` trained with, if it says."""
    return TrainerState.load_from_json(str(checkpoint_dir / state_file)).train_batch_size
