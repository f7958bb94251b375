"""The tiny task of the conformance kit: the demo task's glyph classifier on 64 samples.

Small enough that a conformance test trains, saves and resumes it in about a second on a CPU,
real enough (a two-layer MLP, a metric, an evaluation set) that every part of the loop runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TRAIN_SAMPLES = 64
EVAL_SAMPLES = 32


def build(args: Any) -> Any:
    """``(args) -> TaskParts``; the weights and the data follow ``args.seed``."""
    import torch

    from treadle.builtin.demo_task import Accuracy, GlyphClassifier, GlyphDataset, make_glyphs
    from treadle.components import TaskParts

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = GlyphClassifier()
    return TaskParts(
        model=model,
        train_dataset=GlyphDataset(*make_glyphs(TRAIN_SAMPLES, args.seed, 0)),
        eval_dataset=GlyphDataset(*make_glyphs(EVAL_SAMPLES, args.seed, 1)),
        compute_metrics=Accuracy(),
    )


def tiny_args(output_dir: Path | str, **overrides: Any) -> Any:
    """Arguments for 4 logged steps of 16 samples, no checkpoints, no progress bar; ``overrides`` win.

    A plugin's own fields (``acme_glow_samples``) go in as ``plugin_options``, as from a config file.
    """
    import dataclasses

    from treadle.args import TrainingArguments

    values: dict[str, Any] = dict(
        output_dir=str(output_dir), task="treadle.testing.tiny:build", max_steps=4, logging_steps=1,
        per_device_train_batch_size=16, per_device_eval_batch_size=32, learning_rate=2e-3,
        save_strategy="no", report_to=[], disable_tqdm=True, seed=0,
    )
    core = {f.name for f in dataclasses.fields(TrainingArguments)}
    values.update({k: v for k, v in overrides.items() if k in core})
    plugin_options = {**values.pop("plugin_options", {}), **{k: v for k, v in overrides.items() if k not in core}}
    return TrainingArguments(**values, **({"plugin_options": plugin_options} if plugin_options else {}))
