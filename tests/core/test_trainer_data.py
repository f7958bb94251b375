"""The data pipeline: resumable samplers, positioning a loader, collators, unused columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler
from trainer_kit import CountingDataset, make_data
from treadle.data import (
    DataCollatorWithPadding,
    EvalBatchSampler,
    LengthGroupedSampler,
    RandomEpochSampler,
    RemoveColumnsCollator,
    build_dataloader,
    default_data_collator,
    epoch_iterator,
)
from treadle.errors import UsageError


def test_the_order_is_a_function_of_seed_and_epoch_only():
    sampler = RandomEpochSampler(50, seed=3)
    sampler.set_epoch(2)
    order = list(sampler)
    torch.manual_seed(123)  # the global RNG plays no part
    again = RandomEpochSampler(50, seed=3)
    again.set_epoch(2)
    assert list(again) == order and sorted(order) == list(range(50))
    again.set_epoch(3)
    assert list(again) != order
    assert list(RandomEpochSampler(50, seed=4)) != list(RandomEpochSampler(50, seed=3))


def test_skip_starts_the_epoch_later_in_the_same_order():
    sampler = RandomEpochSampler(50, seed=3)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.skip(20)
    assert list(sampler) == full[20:] and len(sampler) == 30
    sampler.set_epoch(1)
    assert list(sampler) == full  # a new epoch starts from the beginning again


def test_shards_split_an_epoch_between_processes():
    shards = [RandomEpochSampler(10, seed=0, num_replicas=3, rank=r) for r in range(3)]
    parts = [list(s) for s in shards]
    assert [len(p) for p in parts] == [4, 4, 4]  # padded to a multiple of 3
    assert set().union(*parts) == set(range(10))


def test_length_grouped_sampler_sorts_mega_batches_longest_first():
    lengths = [(i * 7) % 23 + 1 for i in range(100)]
    sampler = LengthGroupedSampler(lengths, batch_size=2, seed=0, mega_batch_mult=10)
    order = list(sampler)
    assert sorted(order) == list(range(100))
    megas = [order[i : i + 20] for i in range(0, 100, 20)]
    for mega in megas:
        assert [lengths[i] for i in mega] == sorted((lengths[i] for i in mega), reverse=True)
    assert lengths[order[0]] == max(lengths)
    again = LengthGroupedSampler(lengths, batch_size=2, seed=0, mega_batch_mult=10)
    assert list(again) == order


def test_eval_batches_are_dealt_so_that_gathering_keeps_the_dataset_order():
    per_rank = [list(EvalBatchSampler(10, 2, num_replicas=2, rank=r)) for r in range(2)]
    gathered = [i for step in zip(*per_rank) for batch in step for i in batch]
    assert gathered[:10] == list(range(10))


class _Args:
    dataloader_num_workers = 0
    dataloader_persistent_workers = False
    dataloader_prefetch_factor = None
    dataloader_drop_last = False


def _loader(data, workers=0, seed=5):
    args = _Args()
    args.dataloader_num_workers = workers
    return build_dataloader(data, batch_size=4, collate_fn=default_data_collator, args=args, seed=seed,
                            sampler=RandomEpochSampler(len(data), seed=seed))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_starts_mid_epoch_without_reading_the_skipped_batches(workers):
    data = make_data(40)
    full = [b[0] for b in epoch_iterator(_loader(data, workers), 3)]
    counted = CountingDataset(data)
    loader = _loader(counted if workers == 0 else data, workers)
    tail = [b[0] for b in epoch_iterator(loader, 3, skip_batches=6)]
    assert len(tail) == 4 and all(torch.equal(a, b) for a, b in zip(tail, full[6:]))
    if workers == 0:
        assert counted.reads == 16


def test_iterating_a_loader_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    for _ in epoch_iterator(_loader(make_data(16)), 0):
        pass
    assert torch.equal(torch.get_rng_state(), state)


def test_a_plain_dataloader_is_positioned_by_reading_and_dropping():
    loader = DataLoader(make_data(20), batch_size=5, sampler=SequentialSampler(range(20)))
    batches = list(epoch_iterator(loader, 0, skip_batches=2))
    assert len(batches) == 2 and torch.equal(batches[0][0], make_data(20).tensors[0][10:15])


def test_default_collator_stacks_dicts_tuples_and_renames_label():
    batch = default_data_collator([{"x": torch.ones(2), "label": 1, "w": 0.5, "name": "a"}, {"x": torch.zeros(2), "label": 0, "w": 1.5, "name": "b"}])
    assert set(batch) == {"x", "labels", "w", "name"}
    assert batch["labels"].dtype == torch.long and batch["w"].dtype == torch.float32 and batch["name"] == ["a", "b"]
    x, y = default_data_collator([(torch.ones(2), torch.tensor(1)), (torch.zeros(2), torch.tensor(0))])
    assert x.shape == (2, 2) and y.tolist() == [1, 0]
    arrays = default_data_collator([{"x": np.ones(3, dtype=np.float32)}] * 2)
    assert arrays["x"].shape == (2, 3)
    with pytest.raises(UsageError, match="DataCollatorWithPadding"):
        default_data_collator([{"input_ids": [1, 2]}, {"input_ids": [1]}])


def test_padding_collator_pads_inputs_labels_and_adds_a_mask():
    batch = DataCollatorWithPadding(pad_token_id=9, pad_to_multiple_of=4)([
        {"input_ids": [1, 2, 3], "labels": [1, 2, 3], "label_class": 1},
        {"input_ids": [4], "labels": [4], "label_class": 0},
    ])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 9], [4, 9, 9, 9]]
    assert batch["labels"].tolist() == [[1, 2, 3, -100], [4, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["label_class"].tolist() == [1, 0]


def test_remove_columns_collator_drops_what_forward_does_not_take():
    collate = RemoveColumnsCollator(default_data_collator, {"x", "labels"}, "training")
    batch = collate([{"x": torch.ones(1), "labels": 1, "id": "a"}])
    assert set(batch) == {"x", "labels"}
    with pytest.raises(UsageError, match="none of the training keys"):
        RemoveColumnsCollator(default_data_collator, {"x"}, "training")([{"pixels": torch.ones(1)}])
