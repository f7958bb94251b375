"""The task the hub tests train: the demo glyph classifier on a few hundred samples.

Small enough that a ``treadle train`` child process runs in seconds. With ``HUB_TEST_CRASH_AT=N``
the run raises after optimizer step N (a machine that dies mid-run, for the resume-from-hub test).
"""

from __future__ import annotations

import os

from treadle.builtin.demo_task import Accuracy, GlyphClassifier, GlyphDataset, make_glyphs
from treadle.components import TaskParts
from treadle.markers import hookimpl


class CrashAt:
    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def treadle_on_step_end(self, state) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"hub test: crashing after step {self.step}")


def build(args) -> TaskParts:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = GlyphClassifier()
    crash = os.environ.get("HUB_TEST_CRASH_AT")
    return TaskParts(
        model=model,
        train_dataset=GlyphDataset(*make_glyphs(512, args.seed, 0)),
        eval_dataset=GlyphDataset(*make_glyphs(128, args.seed, 1)),
        compute_metrics=Accuracy(),
        callbacks=[CrashAt(int(crash))] if crash else None,
    )
