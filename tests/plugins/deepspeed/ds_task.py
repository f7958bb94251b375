"""A small deterministic task for the DeepSpeed runs: the demo's glyphs, an MLP without dropout.

Without dropout a step depends only on the weights and the batch, so runs on different process
counts can be compared weight for weight. 1 024 training samples keep every run a few seconds.
"""

from __future__ import annotations

from typing import Any

import torch

from treadle.builtin.demo_task import GlyphClassifier, GlyphDataset, make_glyphs
from treadle.components import TaskParts


def build(args: Any) -> TaskParts:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = GlyphClassifier(hidden=32, dropout=0.0)
    return TaskParts(
        model=model,
        train_dataset=GlyphDataset(*make_glyphs(1024, args.seed, 0)),
        eval_dataset=GlyphDataset(*make_glyphs(64, args.seed, 1)),
    )
