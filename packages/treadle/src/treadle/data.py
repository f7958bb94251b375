"""Dataloaders whose order is a pure function of (seed, epoch), and the collators the Trainer uses.

Exact resume needs two things from the data side:

* the order of the samples in epoch ``e`` depends only on ``(seed, e)``: the samplers here draw
  their permutation from their own ``torch.Generator`` seeded with ``seed + e``, never from the
  global RNG (which belongs to the model: dropout, and is saved in checkpoints);
* an epoch can start at micro-batch ``k`` without loading batches ``0..k-1``: the sampler simply
  starts its index list at ``k * batch_size``. Samplers run in the main process, so this holds
  with ``dataloader_num_workers > 0`` too.

``TreadleDataLoader.set_epoch(epoch, skip_batches)`` does both, and re-seeds the loader's own
generator so that the worker seeds are deterministic and iterating never touches the global RNG.
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
import random
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, TensorDataset

from treadle.errors import UsageError

# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


class EpochSampler(Sampler[int]):
    """Base of the resumable samplers: a per-epoch index list, sharded, with a start offset.

    Subclasses implement ``_order(generator)``. With ``num_replicas > 1`` the list is padded (by
    repeating its head) to a multiple of ``num_replicas`` and process ``rank`` takes every
    ``num_replicas``-th index, so every process sees the same number of samples.
    """

    def __init__(self, num_samples: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start = 0
        self.tag_every = 0
        """With ``n > 0``, every ``n``-th index (the first of each batch of ``n``) is an ``EpochIndex``,
        which ``WorkerSeededDataset`` seeds the batch from; the others stay plain ints, so a batch
        costs one such object, not one per sample."""

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order to produce; resets the start offset."""
        self.epoch = epoch
        self.start = 0

    def skip(self, num_indices: int) -> None:
        """Start this epoch ``num_indices`` into its index list (no data is loaded for them)."""
        self.start = num_indices

    def _order(self, generator: torch.Generator) -> list[int]:
        raise NotImplementedError

    def epoch_indices(self) -> list[int]:
        """This process's full index list for the current epoch."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = self._order(generator)
        if self.num_replicas > 1:
            total = math.ceil(len(order) / self.num_replicas) * self.num_replicas
            order = (order * math.ceil(total / max(len(order), 1)))[:total]
            order = order[self.rank :: self.num_replicas]
        return order

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()[self.start :]
        if self.tag_every:
            for i in range(0, len(indices), self.tag_every):
                indices[i] = EpochIndex(indices[i], self.epoch, self.start + i)
        return iter(indices)

    def __len__(self) -> int:
        per_replica = math.ceil(self.num_samples / self.num_replicas)
        return max(per_replica - self.start, 0)


class RandomEpochSampler(EpochSampler):
    """A random permutation per epoch, drawn from ``seed + epoch``."""

    def _order(self, generator: torch.Generator) -> list[int]:
        return torch.randperm(self.num_samples, generator=generator).tolist()


class SequentialEpochSampler(EpochSampler):
    """``0, 1, 2, ...`` every epoch (used when shuffling is off)."""

    def _order(self, generator: torch.Generator) -> list[int]:
        return list(range(self.num_samples))


class LengthGroupedSampler(EpochSampler):
    """Random order, but samples of similar length end up in the same batch (less padding).

    The permutation is cut into mega-batches of ``mega_batch_mult * batch_size`` samples; each is
    sorted by length, longest first; the mega-batch holding the longest sample of all goes first,
    so an out-of-memory error shows up on the first step rather than late in the epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        mega_batch_mult: int = 50,
    ) -> None:
        super().__init__(len(lengths), seed, num_replicas, rank)
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.mega_batch_mult = mega_batch_mult

    def _order(self, generator: torch.Generator) -> list[int]:
        permutation = torch.randperm(self.num_samples, generator=generator).tolist()
        size = max(self.batch_size * self.mega_batch_mult, 1)
        megas = [permutation[i : i + size] for i in range(0, len(permutation), size)]
        megas = [sorted(m, key=lambda i: self.lengths[i], reverse=True) for m in megas]
        if megas:
            longest = max(range(len(megas)), key=lambda j: self.lengths[megas[j][0]])
            megas[0], megas[longest] = megas[longest], megas[0]
        return [i for m in megas for i in m]


class EvalBatchSampler(Sampler[list[int]]):
    """Evaluation batches in dataset order, dealt round-robin over processes.

    Process ``r`` takes batches ``r, r + W, r + 2W, ...``, so gathering step by step yields the
    batches in dataset order. The last round is padded with batches from the start;
    ``num_samples`` tells the evaluation loop where to truncate.
    """

    def __init__(self, num_samples: int, batch_size: int, drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank

    def _batches(self) -> list[list[int]]:
        indices = list(range(self.num_samples))
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.num_replicas > 1 and batches:
            rounds = math.ceil(len(batches) / self.num_replicas)
            batches = (batches * self.num_replicas)[: rounds * self.num_replicas]
            batches = batches[self.rank :: self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class EpochIndex(int):
    """A sample index that also knows its epoch and its position in that epoch's order."""

    epoch: int
    position: int

    def __new__(cls, index: int, epoch: int, position: int) -> "EpochIndex":
        self = super().__new__(cls, index)
        self.epoch, self.position = epoch, position
        return self

    def __reduce__(self) -> tuple:
        return (EpochIndex, (int(self), self.epoch, self.position))


# ---------------------------------------------------------------------------------------------
# The dataloader
# ---------------------------------------------------------------------------------------------


class WorkerSeededDataset(Dataset):
    """In dataloader workers, seed each batch's randomness from (seed, epoch, batch position).

    A worker's random generators are seeded once, when it starts, so random augmentation (or a
    random collator) depends on which worker a batch lands on and on how many batches that
    worker fetched before, which changes when an epoch is resumed mid-way. Re-seeding ``random``,
    numpy and torch before each batch from its place in the epoch makes the batch a pure
    function of ``(seed, epoch, position)``: the same after a resume, and the same for any
    number of workers. In the main process (no workers) nothing is re-seeded: there the
    randomness comes from the global generators, which checkpoints restore.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("dataset", "seed"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(index)]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        first = indices[0] if indices else None
        if isinstance(first, EpochIndex) and torch.utils.data.get_worker_info() is not None:
            seed = int(np.random.SeedSequence([self.seed, first.epoch, first.position]).generate_state(1)[0])
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        plain = [int(i) for i in indices]
        fetch_many = getattr(self.dataset, "__getitems__", None)
        return fetch_many(plain) if fetch_many is not None else [self.dataset[i] for i in plain]


def seed_worker(worker_id: int) -> None:
    """Seed numpy in a worker from the seed torch gave it (torch already seeds ``random``)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class TreadleDataLoader(DataLoader):
    """A DataLoader that can be positioned at (epoch, batch) without replaying batches."""

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Prepare the next ``iter(self)`` to produce epoch ``epoch`` from batch ``skip_batches``."""
        if self.generator is not None:
            self.generator.manual_seed(self.seed + epoch)
        sampler = self.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self._pending_skip = 0
        if skip_batches:
            if isinstance(sampler, EpochSampler) and self.batch_size is not None:
                sampler.skip(skip_batches * self.batch_size)
            else:
                self._pending_skip = skip_batches

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()
        skip = getattr(self, "_pending_skip", 0)
        if skip:
            # No index list to cut (an IterableDataset): the skipped batches must be read.
            self._pending_skip = 0
            return itertools.islice(iterator, skip, None)
        return iterator


def epoch_iterator(dataloader: Any, epoch: int, skip_batches: int = 0) -> Iterator[Any]:
    """Iterate ``dataloader`` for ``epoch``, starting at batch ``skip_batches``.

    Works for any DataLoader (e.g. one from an overridden ``get_train_dataloader``): samplers
    and datasets with ``set_epoch`` get the epoch, and without a resumable sampler the skipped
    batches are read and dropped.
    """
    if isinstance(dataloader, TreadleDataLoader):
        dataloader.set_epoch(epoch, skip_batches)
        return iter(dataloader)
    for owner in (getattr(dataloader, "sampler", None), getattr(dataloader, "dataset", None)):
        if hasattr(owner, "set_epoch"):
            owner.set_epoch(epoch)
    iterator = iter(dataloader)
    return itertools.islice(iterator, skip_batches, None) if skip_batches else iterator


def build_dataloader(
    dataset: Any,
    *,
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any],
    args: Any,
    seed: int,
    sampler: Optional[Sampler] = None,
    batch_sampler: Optional[Sampler] = None,
    pin_memory: bool = False,
    drop_last: Optional[bool] = None,
) -> TreadleDataLoader:
    """A ``TreadleDataLoader`` configured by the ``dataloader_*`` arguments."""
    workers = args.dataloader_num_workers
    kwargs: dict[str, Any] = {
        "collate_fn": collate_fn,
        "num_workers": workers,
        "pin_memory": pin_memory,
        "generator": torch.Generator().manual_seed(seed),
    }
    if workers > 0:
        kwargs["worker_init_fn"] = seed_worker
        kwargs["persistent_workers"] = bool(args.dataloader_persistent_workers)
        if args.dataloader_prefetch_factor is not None:
            kwargs["prefetch_factor"] = args.dataloader_prefetch_factor
        if isinstance(sampler, EpochSampler) and not isinstance(dataset, IterableDataset):
            sampler.tag_every = batch_size
            dataset = WorkerSeededDataset(dataset, seed)
    if batch_sampler is not None:
        return TreadleDataLoader(dataset, batch_sampler=batch_sampler, seed=seed, **kwargs)
    if isinstance(dataset, IterableDataset):
        sampler = None
    drop = args.dataloader_drop_last if drop_last is None else drop_last
    return TreadleDataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop, seed=seed, **kwargs)


def has_length(dataset: Any) -> bool:
    try:
        return len(dataset) is not None
    except (TypeError, NotImplementedError):
        return False


def sample_lengths(dataset: Any, length_column_name: str, main_input_name: str) -> list[int]:
    """Per-sample lengths for ``group_by_length``: the length column if present, else the input's length."""
    column_names = getattr(dataset, "column_names", None)
    if column_names is not None and length_column_name in column_names:
        return [int(v) for v in dataset[length_column_name]]
    lengths = []
    for i in range(len(dataset)):
        item = dataset[i]
        if isinstance(item, Mapping):
            if length_column_name in item:
                lengths.append(int(item[length_column_name]))
                continue
            value = item.get(main_input_name)
            if value is None:
                raise UsageError(
                    f"group_by_length: sample {i} has neither a {length_column_name!r} value nor "
                    f"{main_input_name!r}; add a length column or set --length_column_name"
                )
        elif isinstance(item, (tuple, list)):
            value = item[0]
        else:
            value = item
        lengths.append(len(value))
    return lengths


# ---------------------------------------------------------------------------------------------
# Collators
# ---------------------------------------------------------------------------------------------

_LABEL_ALIASES = {"label": "labels", "label_ids": "labels"}


def _is_number(value: Any) -> bool:
    """A Python or numpy number (numpy registers its scalar types with the ``numbers`` ABCs)."""
    return isinstance(value, (numbers.Number, np.bool_)) and not isinstance(value, complex)


def _leaf(value: Any) -> Any:
    """The first innermost element of nested lists / tuples (what decides their dtype)."""
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return value


def _stack(values: list[Any], label: bool = False) -> Any:
    """One batch tensor from one field of every sample, as transformers' default collator makes it.

    Tensors and numpy arrays are stacked; Python and numpy numbers and nested lists of them
    become a tensor (numpy keeps its dtype, Python ints are int64 and floats float32). A label
    field is int64 when its values are integers and float32 when they are not, whatever their
    type. Anything else (strings, objects) stays a list.
    """
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(values)  # a tensor keeps the dtype its dataset chose, labels too
    if _is_number(first) and isinstance(first, (bool, int, float)):  # Python numbers (and np.float64)
        return torch.tensor(values, dtype=torch.float32 if isinstance(first, float) else torch.long)
    if isinstance(first, np.ndarray) or _is_number(first):
        batch = _ragged_guard(lambda: torch.from_numpy(np.asarray(values)))
    elif isinstance(first, (list, tuple)) and first and isinstance(_leaf(first), torch.Tensor):
        batch = _ragged_guard(lambda: torch.stack([torch.stack([torch.as_tensor(x) for x in v]) for v in values]))
    elif isinstance(first, (list, tuple)) and first and isinstance(_leaf(first), (np.ndarray, np.generic)):
        batch = _ragged_guard(lambda: torch.from_numpy(np.asarray(values)))
    elif isinstance(first, (list, tuple)) and first and _is_number(_leaf(first)):
        batch = _ragged_guard(lambda: torch.tensor(values))
    else:
        return values  # strings and other objects stay a list
    if label:
        batch = batch.float() if batch.is_floating_point() else batch.long()
    return batch


def _ragged_guard(make: Callable[[], torch.Tensor]) -> torch.Tensor:
    try:
        return make()
    except (ValueError, RuntimeError) as exc:
        raise UsageError(
            "the samples hold sequences of different lengths, which cannot be stacked into one "
            "tensor; pass data_collator=treadle.data.DataCollatorWithPadding() to pad them"
        ) from exc


def default_data_collator(features: list[Any]) -> Any:
    """Stack a list of samples into a batch.

    Dicts become a dict of tensors (``label`` / ``label_ids`` are renamed ``labels``), tuples
    (e.g. from a ``TensorDataset``) a tuple of tensors, tensors a stacked tensor. Values may be
    tensors, numpy arrays or scalars (as ``datasets`` returns them in numpy format), Python
    numbers, or nested lists of numbers; see ``_stack`` for the dtypes.
    """
    first = features[0]
    if isinstance(first, Mapping):
        batch = {}
        for key in first:
            if first[key] is None:
                continue
            name = _LABEL_ALIASES.get(key, key)
            batch[name] = _stack([f[key] for f in features], label=name == "labels")
        return batch
    if isinstance(first, (tuple, list)) and first and not _is_number(first[0]):
        columns = [_stack([f[i] for f in features]) for i in range(len(first))]
        return tuple(columns) if isinstance(first, tuple) else columns
    return _stack(list(features))


class DataCollatorWithPadding:
    """Pad variable-length sequence fields of dict samples to the longest in the batch.

    Given a tokenizer or feature extractor (the Trainer's ``processing_class``; the first
    argument, as in transformers), its own ``pad`` pads the model inputs, so its pad token,
    padding side and mask conventions hold; without one, sequences are padded here with
    ``pad_token_id`` on ``padding_side``, and an ``attention_mask`` (0 on padding) is added when
    the samples have none. ``labels`` are padded with ``label_pad_token_id`` (ignored by the
    loss) on the same side in both cases. Fixed-size fields are stacked as by
    ``default_data_collator``; a batch whose sequences already have one length is stacked as it
    is (nothing to pad, so a tokenizer without a pad token still works for fixed-length data).
    """

    def __init__(
        self, tokenizer: Any = None, pad_token_id: Optional[int] = None, label_pad_token_id: int = -100,
        pad_to_multiple_of: Optional[int] = None, padding_side: Optional[str] = None,
    ) -> None:
        if isinstance(tokenizer, numbers.Integral) and not isinstance(tokenizer, bool):
            tokenizer, pad_token_id = None, int(tokenizer)  # the older signature: the pad id came first
        self.tokenizer = tokenizer
        own_pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = pad_token_id if pad_token_id is not None else (own_pad if own_pad is not None else 0)
        self.label_pad_token_id = label_pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side = padding_side or getattr(tokenizer, "padding_side", None) or "right"
        if self.padding_side not in ("left", "right"):
            raise UsageError(f"DataCollatorWithPadding: padding_side must be 'left' or 'right', got {self.padding_side!r}")

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, Any]:
        renamed = [{_LABEL_ALIASES.get(k, k): v for k, v in f.items() if v is not None} for f in features]
        sequences = [key for key, value in renamed[0].items() if _is_padded_field(value)]
        if not self.pad_to_multiple_of and all(len({_length(f[key]) for f in renamed}) == 1 for key in sequences):
            return default_data_collator(renamed)  # one length already: nothing to pad
        if self.tokenizer is not None and callable(getattr(self.tokenizer, "pad", None)):
            return self._pad_with_processor(renamed)
        batch: dict[str, Any] = {}
        for key in renamed[0]:
            values = [f[key] for f in renamed]
            batch[key] = self._pad(key, values) if key in sequences else _stack(values, label=key == "labels")
        if "attention_mask" not in batch and "input_ids" in sequences:
            lengths = torch.tensor([_length(f["input_ids"]) for f in renamed])
            width = batch["input_ids"].shape[1]
            positions = torch.arange(width)[None, :]
            keep = positions < lengths[:, None] if self.padding_side == "right" else positions >= width - lengths[:, None]
            batch["attention_mask"] = keep.long()
        return batch

    def _pad_with_processor(self, renamed: list[dict[str, Any]]) -> dict[str, Any]:
        """The processor pads the model inputs; labels are padded here (processors leave them alone)."""
        labels = [f.pop("labels") for f in renamed] if "labels" in renamed[0] else None
        try:
            padded = self.tokenizer.pad(renamed, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")
        except ValueError as exc:  # e.g. a tokenizer without a pad token
            raise UsageError(
                f"DataCollatorWithPadding: {type(self.tokenizer).__name__}.pad could not pad the batch ({exc}); "
                "give the tokenizer a pad token (e.g. tokenizer.pad_token = tokenizer.eos_token) or pass a data_collator"
            ) from exc
        batch = dict(padded)
        if labels is not None:
            batch["labels"] = self._pad("labels", labels) if _is_padded_field(labels[0]) else _stack(labels, label=True)
        return batch

    def _pad(self, key: str, values: list[Any]) -> torch.Tensor:
        tensors = [torch.as_tensor(v) for v in values]
        width = max(t.shape[0] for t in tensors)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad = self.label_pad_token_id if key == "labels" else 0 if key == "attention_mask" else self.pad_token_id
        out = torch.full((len(tensors), width, *tensors[0].shape[1:]), pad, dtype=tensors[0].dtype)
        for row, t in enumerate(tensors):
            if self.padding_side == "right":
                out[row, : t.shape[0]] = t
            else:
                out[row, width - t.shape[0]:] = t
        return out


def pads_batches(processing_class: Any) -> bool:
    """Whether a ``processing_class`` pads batches (a tokenizer or a sequence feature extractor): then
    the Trainer's default collator is ``DataCollatorWithPadding(processing_class)``, as in transformers."""
    return callable(getattr(processing_class, "pad", None)) and (
        hasattr(processing_class, "pad_token_id") or hasattr(processing_class, "padding_value")
    )


def _is_padded_field(value: Any) -> bool:
    return isinstance(value, (list, tuple, torch.Tensor, np.ndarray)) and _is_sequence(value)


def _length(value: Any) -> int:
    return int(value.shape[0]) if isinstance(value, (torch.Tensor, np.ndarray)) else len(value)


def _is_sequence(value: Any) -> bool:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.ndim >= 1
    return True


class RemoveColumnsCollator:
    """Drop the keys of dict samples (and of the batch) that the model's ``forward`` does not accept."""

    def __init__(self, collator: Callable[[list[Any]], Any], keep: set[str], description: str = "") -> None:
        self.collator = collator
        self.keep = keep
        self.description = description
        self._dicts: Optional[bool] = None  # decided by the first batch: tuples have no columns

    def __call__(self, features: list[Any]) -> Any:
        if self._dicts is None and features:
            self._dicts = isinstance(features[0], Mapping)
            if self._dicts:
                self._check(features[0])
        if not self._dicts:
            return self.collator(features)
        features = [{k: v for k, v in f.items() if k in self.keep} for f in features]
        batch = self.collator(features)
        if isinstance(batch, dict) and not self.keep.issuperset(batch):
            batch = {k: v for k, v in batch.items() if k in self.keep}  # e.g. a mask the collator added
        return batch

    def _check(self, sample: Mapping[str, Any]) -> None:
        if not any(k in self.keep for k in sample):
            raise UsageError(
                f"remove_unused_columns: none of the {self.description} keys ({', '.join(sample)}) is an "
                f"argument of the model's forward ({', '.join(sorted(self.keep))}); rename the "
                "columns, or pass --remove_unused_columns false"
            )


def forward_parameters(model: Any) -> tuple[list[str], bool]:
    """The named parameters of ``model.forward`` and whether it also takes ``**kwargs``."""
    forward = getattr(model, "forward", model)
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    return names, var_kw


def remove_unused_columns(dataset: Any, collator: Callable, model: Any, label_names: Sequence[str], description: str) -> tuple[Any, Callable]:
    """Apply ``remove_unused_columns``: drop dataset columns / sample keys the model cannot take.

    A ``datasets.Dataset`` loses the columns; for any other dataset of dicts the collator drops
    the keys. A forward with ``**kwargs`` accepts anything and a ``TensorDataset``'s samples are
    tuples (no column names), so for them nothing is removed and the collator is not wrapped.
    """
    names, var_kw = forward_parameters(model)
    if var_kw or isinstance(dataset, TensorDataset):
        return dataset, collator
    keep = set(names) | set(label_names) | set(_LABEL_ALIASES)
    column_names = getattr(dataset, "column_names", None)
    if column_names is not None and hasattr(dataset, "remove_columns"):
        unused = [c for c in column_names if c not in keep]
        if unused and len(unused) == len(column_names):
            raise UsageError(
                f"remove_unused_columns: no column of the {description} dataset ({', '.join(column_names)}) "
                f"is an argument of the model's forward; pass --remove_unused_columns false or rename them"
            )
        return (dataset.remove_columns(unused) if unused else dataset), collator
    return dataset, RemoveColumnsCollator(collator, keep, description)


__all__ = [
    "EpochSampler",
    "RandomEpochSampler",
    "SequentialEpochSampler",
    "LengthGroupedSampler",
    "EvalBatchSampler",
    "TreadleDataLoader",
    "epoch_iterator",
    "build_dataloader",
    "default_data_collator",
    "DataCollatorWithPadding",
    "pads_batches",
    "RemoveColumnsCollator",
    "remove_unused_columns",
    "forward_parameters",
    "has_length",
    "sample_lengths",
    "seed_worker",
    "Dataset",
]
