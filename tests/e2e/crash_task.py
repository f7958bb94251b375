"""The task the crash-injection test trains with ``treadle train --task crash_task:build``.

The model and data are the resume tests' tiny task (dropout included, so a lost RNG state would
show). ``Announce`` reports each optimizer step, so the test can time its SIGKILLs by training
progress rather than by wall-clock time. ``run_cli`` is the child-process entry point.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from treadle.components import TaskParts
from treadle.markers import hookimpl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "core"))
from resume_task import Net, Samples  # noqa: E402

_channel = None
"""Where ``Announce`` reports when the test runs this task in a child process (else stdout)."""


class Announce:
    """Say ``BEGIN <step>`` when training starts and ``STEP <n>`` after each optimizer step."""

    @hookimpl
    def treadle_on_train_begin(self, state) -> None:
        _say(f"BEGIN {state.global_step}")

    @hookimpl
    def treadle_on_step_end(self, state) -> None:
        _say(f"STEP {state.global_step}")


def _say(message: str) -> None:
    if _channel is not None:
        _channel.send_bytes(message.encode())  # one small write: atomic on a pipe
    else:
        print(message, flush=True)


def build(args) -> TaskParts:
    return TaskParts(model=Net(), train_dataset=Samples(52), eval_dataset=Samples(16), callbacks=[Announce()])


def run_cli(argv: list[str], channel) -> None:
    """Child-process entry: ``treadle <argv>`` with progress sent over ``channel``, output muted."""
    from treadle.cli import main

    global _channel
    _channel = channel
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.exit(main(argv))
