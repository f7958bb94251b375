"""The lifecycle events have one source, the hook specs: dispatcher and TrainerCallback follow it."""

from __future__ import annotations

from treadle import hookspecs
from treadle.callbacks import TrainerCallback
from treadle.events import LIFECYCLE_EVENTS


def test_events_are_the_treadle_on_hookspecs():
    specs = [name for name in dir(hookspecs) if name.startswith("treadle_on_")]
    assert sorted(LIFECYCLE_EVENTS) == sorted(name.removeprefix("treadle_on_") for name in specs)
    assert LIFECYCLE_EVENTS[0] == "init_end" and "prediction_step" in LIFECYCLE_EVENTS


def test_trainer_callback_has_a_no_op_for_every_event():
    callback = TrainerCallback()
    for event in LIFECYCLE_EVENTS:
        assert getattr(callback, f"on_{event}")(None, None, None, metrics={}) is None
    assert {name[3:] for name in vars(TrainerCallback) if name.startswith("on_")} == set(LIFECYCLE_EVENTS)
