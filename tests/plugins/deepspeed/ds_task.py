"""A small deterministic task for the DeepSpeed runs: the demo's glyphs, an MLP without dropout.

Without dropout a step depends only on the weights and the batch, so runs on different process
counts can be compared weight for weight. 1 024 training samples keep every run a few seconds.
"""

from __future__ import annotations

from typing import Any

import torch

from treadle.builtin.demo_task import GlyphClassifier, GlyphDataset, make_glyphs
from treadle.components import TaskParts
from treadle.markers import hookimpl


def build(args: Any) -> TaskParts:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = GlyphClassifier(hidden=32, dropout=0.0)
    return TaskParts(
        model=model,
        train_dataset=GlyphDataset(*make_glyphs(1024, args.seed, 0)),
        eval_dataset=GlyphDataset(*make_glyphs(64, args.seed, 1)),
    )


def _record(args: Any, model: torch.nn.Module, **facts: Any) -> None:
    """What each rank's model looked like right after the task built it (inside the strategy's model_init_context)."""
    import json
    import os
    from pathlib import Path

    first = next(model.parameters())
    facts.update(numel=first.numel(), ds_numel=getattr(first, "ds_numel", None))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"built-rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(facts))


class RecordParameterCount:
    """Writes ``trainer.get_num_trainable_parameters()`` at the start of training (rank 0)."""

    @hookimpl
    def treadle_on_train_begin(self, trainer: Any, args: Any) -> None:
        import json
        import os
        from pathlib import Path

        if os.environ.get("RANK", "0") == "0":
            Path(args.output_dir, "trainable.json").write_text(json.dumps(trainer.get_num_trainable_parameters()))


def build_recorded(args: Any) -> TaskParts:
    """``build``, noting whether ZeRO-3 built the model partitioned, and the trainable parameters the Trainer counts."""
    parts = build(args)
    _record(args, parts.model)
    parts.callbacks = [RecordParameterCount()]
    return parts


def pretrained_llama(args: Any) -> TaskParts:
    """A tiny Llama loaded with from_pretrained from $DS_TEST_PRETRAINED, and the sum of its gathered weights.

    Under ZeRO-3 the load goes into each rank's partitions; the sum, taken with every partition
    gathered, must be the checkpoint's.
    """
    import os

    from sp_kit import Tokens
    from transformers import LlamaForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    model = LlamaForCausalLM.from_pretrained(os.environ["DS_TEST_PRETRAINED"])
    parameters = list(model.parameters())
    if hasattr(parameters[0], "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters(parameters):
            total = sum(float(p.detach().double().sum()) for p in parameters)
    else:
        total = sum(float(p.detach().double().sum()) for p in parameters)
    _record(args, model, weight_sum=total, zero3_flag=is_deepspeed_zero3_enabled())
    return TaskParts(model=model, train_dataset=Tokens(32), eval_dataset=Tokens(8, seed=1))


def reads_weights_while_building(args: Any) -> TaskParts:
    """A task that computes with a weight right after building it: under zero.Init the weight is an empty partition."""
    parts = build(args)
    first = next(parts.model.parameters())
    first.view(first.shape[0] if first.dim() else 1, -1)  # a full-shape view of a partitioned tensor fails
    return parts
