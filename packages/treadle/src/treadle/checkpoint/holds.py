"""Checkpoints a plugin is still reading, which ``save_total_limit`` rotation must not delete yet.

A hub upload runs in the background: ``treadle_on_save`` returns at once, and the upload reads
the checkpoint's files seconds or minutes later. If rotation deleted the checkpoint in the
meantime, the upload would fail or, worse, push a half-deleted folder. So the plugin takes a
hold (``Trainer.hold_checkpoint``) in ``treadle_on_save`` and releases it when the upload is
done; rotation skips held checkpoints, and the first rotation after the release deletes them if
they are still beyond the limit. Holds are counted (two readers, two releases) and releasing
is idempotent, because uploads finish on another thread in any order.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Union


class CheckpointHolds:
    """The held checkpoint directories of one Trainer; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Path, int] = {}
        self.ever_held = False
        """Whether any checkpoint was held in this run (the end of training then rotates once more)."""

    def hold(self, path: Union[str, os.PathLike]) -> Callable[[], None]:
        """Keep ``path`` from rotation; returns ``release()``, which may be called more than once."""
        key = Path(path).resolve()
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            self.ever_held = True
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                left = self._counts.get(key, 0) - 1
                if left > 0:
                    self._counts[key] = left
                else:
                    self._counts.pop(key, None)

        return release

    def held(self) -> frozenset[Path]:
        """The directories held right now (resolved paths)."""
        with self._lock:
            return frozenset(self._counts)

    def is_held(self, path: Union[str, os.PathLike]) -> bool:
        return Path(path).resolve() in self.held()
