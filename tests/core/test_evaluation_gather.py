"""Evaluation gathers over the processes that evaluate different samples; per-rank state over all.

Under tensor / context / sequence parallel, the processes of a block compute the same batch, so
evaluation takes its predictions once per block (``Strategy.evaluation_gather``), while the
loop's own per-rank state (the loss window saved in checkpoints) still needs every process's
row (``Strategy.all_gather``). The stand-in strategy below has 4 processes in blocks of 2: its
world gather repeats a tensor 4 times, its evaluation gather twice.
"""

from __future__ import annotations

import torch
from treadle.components import Strategy
from treadle.evaluation import gather_across
from treadle.metrics import _rows_per_rank


class Blocks(Strategy):
    name = "blocks"

    @property
    def world_size(self) -> int:
        return 4

    def setup_model(self, model):
        return model

    def all_gather(self, tensor):
        return torch.cat([tensor.reshape(1) if tensor.dim() == 0 else tensor] * 4)

    def all_gather_object(self, obj):
        return [obj] * 4

    def evaluation_gather(self, tensor):
        return torch.cat([tensor.reshape(1) if tensor.dim() == 0 else tensor] * 2)

    def evaluation_gather_object(self, obj):
        return [obj] * 2


def test_predictions_are_gathered_once_per_block():
    strategy = Blocks(None, None, None)
    logits = torch.arange(6.0).reshape(3, 2)
    assert gather_across(strategy, logits).shape == (6, 2)
    assert gather_across(strategy, {"a": logits}, use_gather_object=True)["a"].shape == (6, 2)


def test_per_rank_state_has_a_row_for_every_process():
    assert _rows_per_rank(Blocks(None, None, None), torch.tensor([1.0, 2.0])).shape == (4, 2)


def test_by_default_evaluation_gathers_over_every_process():
    class World(Blocks):
        evaluation_gather = Strategy.evaluation_gather
        evaluation_gather_object = Strategy.evaluation_gather_object

    assert gather_across(World(None, None, None), torch.ones(3, 2)).shape == (12, 2)
