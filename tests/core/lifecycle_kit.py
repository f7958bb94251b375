"""A reporter and a strategy that record what the run lifecycle did to them (tests/core/test_run_lifecycle.py).

Selected by path, as a user's own components are: ``--report_to lifecycle_kit:RecordingReporter``,
``--strategy lifecycle_kit:CountingStrategy``. The reporter appends each call to
``output_dir/lifecycle.jsonl`` (flushed at once), so a test reads the same record whether the run
was in its own process, in a ``treadle`` subprocess or ended by the interpreter's exit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from treadle.builtin.single import SingleDeviceStrategy
from treadle.components import Reporter

FAIL_LOGS_ENV = "LIFECYCLE_KIT_FAIL_LOGS"
"""Set to 1 to make every ``log`` call raise (a tracking server that went away)."""


def read_events(output_dir: Any) -> list[list[Any]]:
    path = Path(output_dir) / "lifecycle.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class RecordingReporter(Reporter):
    """Records setup / log / finish / fail calls and keeps a run id in checkpoints."""

    name = "recording"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.run_id: Optional[str] = None

    def _record(self, *event: Any) -> None:
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "lifecycle.jsonl"), "a") as handle:
            handle.write(json.dumps(list(event)) + "\n")

    def setup(self, args: Any, state: Any, model: Any) -> None:
        if self.run_id is None:
            self.run_id = f"run-{os.getpid()}-{id(self):x}"
        self._record("setup", self.run_id)

    def log(self, logs: dict[str, float], step: int) -> None:
        if os.environ.get(FAIL_LOGS_ENV) == "1":
            raise ConnectionError("tracking server went away")
        self._record("log", step, sorted(logs))

    def finish(self) -> None:
        self._record("finish", self.run_id)

    def fail(self, exception: BaseException) -> None:
        self._record("fail", type(exception).__name__)

    def state_dict(self) -> Optional[dict[str, Any]]:
        return {"run_id": self.run_id} if self.run_id else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state["run_id"]


class CountingStrategy(SingleDeviceStrategy):
    """The single-device strategy, counting ``setup_environment`` and ``teardown`` calls (on the class)."""

    name = "counting"
    calls: list[str] = []

    def setup_environment(self) -> None:
        type(self).calls.append("setup_environment")
        super().setup_environment()

    def teardown(self) -> None:
        type(self).calls.append("teardown")
        super().teardown()


class _FailsAfter:
    """A dataset that raises once ``limit`` samples were read (training that breaks mid-run)."""

    def __init__(self, data: Any, limit: int) -> None:
        self.data, self.limit, self.reads = data, limit, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        self.reads += 1
        if self.reads > self.limit:
            raise RuntimeError("the data went bad in the middle of training")
        return self.data[index]


def failing_task(args: Any) -> Any:
    """The demo task whose training data breaks after three batches."""
    from treadle.builtin.demo_task import build

    parts = build(args)
    parts.train_dataset = _FailsAfter(parts.train_dataset, 3 * args.per_device_train_batch_size)
    return parts
