"""How the loop counts the items a loss averages over (``num_items_in_batch``) and which models get it."""

from __future__ import annotations

import torch
from torch import nn

from treadle.model_io import accepts_loss_kwargs, count_items, loss_shifts_labels


def test_token_labels_count_their_targets_and_a_causal_lm_skips_position_zero():
    labels = torch.tensor([[5, 6, 7, -100], [8, 9, -100, -100]])
    assert int(count_items({"labels": labels}, ["labels"])) == 5
    assert int(count_items({"labels": labels}, ["labels"], shifted=True)) == 3  # position 0 is never a target


def test_a_batchs_shift_labels_are_counted_as_given():
    batch = {"labels": torch.tensor([[1, 2, 3]]), "shift_labels": torch.tensor([[2, 3, -100]])}
    assert int(count_items(batch, ["labels"], shifted=True)) == 2
    assert int(count_items(batch, ["labels"])) == 2


def test_float_labels_and_unlabelled_batches():
    assert count_items({"labels": torch.zeros(4, 3)}, ["labels"], shifted=True) == 12
    assert count_items({"x": torch.zeros(6, 2)}, ["labels"]) == 6


class KwargsModel(nn.Module):
    loss_type = "ForCausalLM"  # a transformers attribute name on a model that is not one

    def forward(self, x, **kwargs):
        return x


class NamedItems(nn.Module):
    def forward(self, x, num_items_in_batch=None):
        return x


def test_only_a_named_parameter_or_a_declaration_gets_num_items_outside_transformers():
    assert not accepts_loss_kwargs(KwargsModel())  # its **kwargs may go anywhere
    assert accepts_loss_kwargs(NamedItems())
    declared = KwargsModel()
    declared.accepts_loss_kwargs = True
    assert accepts_loss_kwargs(declared)


def test_a_model_outside_transformers_is_never_taken_for_a_shifting_causal_lm():
    assert not loss_shifts_labels(KwargsModel())
    assert not loss_shifts_labels(nn.Linear(2, 2))


def test_the_rule_holds_with_transformers_loaded_too(monkeypatch):
    """A plain model that happens to carry transformers' attribute names stays a plain model,
    whether or not transformers' loss table is loaded in the process."""
    import sys
    import types

    losses = types.ModuleType("transformers.loss.loss_utils")
    losses.ForCausalLMLoss = object()
    losses.LOSS_MAPPING = {"ForCausalLM": losses.ForCausalLMLoss}
    monkeypatch.setitem(sys.modules, losses.__name__, losses)
    assert not loss_shifts_labels(KwargsModel())


def test_a_batch_without_label_names_counts_its_rows():
    assert count_items({"x": torch.zeros(5, 2), "labels": torch.ones(5, dtype=torch.long)}, []) == 5
