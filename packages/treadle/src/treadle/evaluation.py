"""What evaluation and prediction return, and how per-batch outputs are gathered into arrays.

Predictions stay on the device while an evaluation runs and move to the host as numpy arrays at
the end, or every ``eval_accumulation_steps`` batches to bound device memory. Batches whose
sequence length differs are padded on the right with -100 before they are concatenated.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np
import torch

PAD_INDEX = -100


class EvalPrediction:
    """What ``compute_metrics`` receives: ``predictions``, ``label_ids`` and, on request, ``inputs`` / ``losses``.

    Unpacks like a tuple: ``predictions, labels = eval_pred`` (plus inputs and losses when
    ``include_for_metrics`` asked for them).
    """

    def __init__(self, predictions: Any, label_ids: Any, inputs: Any = None, losses: Any = None) -> None:
        self.predictions = predictions
        self.label_ids = label_ids
        self.inputs = inputs
        self.losses = losses
        self.elements = (predictions, label_ids) + tuple(x for x in (inputs, losses) if x is not None)

    def __iter__(self):
        return iter(self.elements)

    def __getitem__(self, index: int) -> Any:
        return self.elements[index]

    def __len__(self) -> int:
        return len(self.elements)


class EvalLoopOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: Optional[dict[str, float]]
    num_samples: Optional[int]


class PredictionOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: Optional[dict[str, float]]


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict[str, float]


# ---------------------------------------------------------------------------------------------
# Nested tensors (a model may return tuples or dicts of logits)
# ---------------------------------------------------------------------------------------------


def nested_map(fn: Any, obj: Any) -> Any:
    if isinstance(obj, (tuple, list)):
        return type(obj)(nested_map(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: nested_map(fn, v) for k, v in obj.items()}
    return None if obj is None else fn(obj)


def _at_least_1d(x: Any) -> Any:
    return x.reshape(1) if x.ndim == 0 else x


def pad_and_concat(parts: list[Any], pad_index: int = PAD_INDEX) -> Any:
    """Concatenate along the first axis; a differing second axis is padded with ``pad_index``."""
    first = parts[0]
    if isinstance(first, (tuple, list)):
        return type(first)(pad_and_concat([p[i] for p in parts], pad_index) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: pad_and_concat([p[k] for p in parts], pad_index) for k in first}
    parts = [_at_least_1d(p) for p in parts]
    is_torch = isinstance(first, torch.Tensor)
    if len({tuple(p.shape[1:]) for p in parts}) == 1:
        return torch.cat(parts) if is_torch else np.concatenate(parts)
    width = max(p.shape[1] for p in parts)
    rows = sum(p.shape[0] for p in parts)
    shape = (rows, width, *parts[0].shape[2:])
    out = torch.full(shape, pad_index, dtype=first.dtype, device=first.device) if is_torch else np.full(shape, pad_index, dtype=first.dtype)
    row = 0
    for p in parts:
        out[row : row + p.shape[0], : p.shape[1]] = p
        row += p.shape[0]
    return out


# ---------------------------------------------------------------------------------------------
# Gathering across processes (each rank evaluates its own share of the batches)
# ---------------------------------------------------------------------------------------------


def gather_across(strategy: Any, value: Any, use_gather_object: bool = False, pad_index: int = PAD_INDEX) -> Any:
    """Every process's ``value`` (tensors, nested in tuples / lists / dicts), concatenated along dim 0.

    Ranks may hold different shapes: the last batch is shorter on some, and sequence lengths
    differ with dynamic padding. Tensors are padded to the largest shape, gathered, and each
    rank's rows trimmed back, so the result has exactly the rows the ranks had, in rank order
    (the extra columns carry ``pad_index``, as when batches of one process are concatenated).
    ``use_gather_object`` (``--eval_use_gather_object``) pickles values instead, so outputs
    that are not tensors (strings, lists of ids) can be gathered too.
    """
    if value is None or strategy.world_size == 1:
        return value
    if use_gather_object:
        return _combine(strategy.evaluation_gather_object(nested_map(_to_host, value)), pad_index)
    if isinstance(value, (tuple, list)):
        return type(value)(gather_across(strategy, v, pad_index=pad_index) for v in value)
    if isinstance(value, dict):
        return {k: gather_across(strategy, v, pad_index=pad_index) for k, v in value.items()}
    return _gather_padded(strategy, value, pad_index)


def _gather_padded(strategy: Any, tensor: torch.Tensor, pad_index: int) -> torch.Tensor:
    tensor = _at_least_1d(tensor)
    shapes = strategy.evaluation_gather(torch.tensor([tensor.shape], device=tensor.device))  # (replicas, ndim)
    if bool((shapes == shapes[0]).all()):
        return strategy.evaluation_gather(tensor)
    target = [int(n) for n in shapes.max(dim=0).values]
    padded = tensor.new_full(target, pad_index)
    padded[tuple(slice(0, n) for n in tensor.shape)] = tensor
    chunks = strategy.evaluation_gather(padded).split(target[0])
    return torch.cat([chunk[: int(rows)] for chunk, rows in zip(chunks, shapes[:, 0])])


def _to_host(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def _combine(parts: list[Any], pad_index: int) -> Any:
    """One value from every rank's (pickled) value: tensors concatenated, lists joined."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return pad_and_concat(parts, pad_index)
    if isinstance(first, dict):
        return {k: _combine([p[k] for p in parts], pad_index) for k in first}
    if isinstance(first, tuple):
        return tuple(_combine([p[i] for p in parts], pad_index) for i in range(len(first)))
    if isinstance(first, list):
        return [item for part in parts for item in part]
    return parts


def to_numpy(obj: Any) -> Any:
    def convert(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu()
            if t.dtype == torch.bfloat16:
                t = t.float()
            return t.numpy()
        return np.asarray(t)

    return nested_map(convert, obj)


def truncate(obj: Any, num_samples: int) -> Any:
    """Drop the samples a distributed sampler repeated to fill its last round."""
    return nested_map(lambda a: a[:num_samples], obj)


class Accumulator:
    """Gathers per-batch outputs; moves them to the host every ``offload_every`` batches.

    With ``concat=False`` (``eval_do_concat_batches false``) the result is a list with one
    array (or nested structure) per batch.
    """

    def __init__(self, offload_every: Optional[int] = None, concat: bool = True, pad_index: int = PAD_INDEX) -> None:
        self.offload_every = offload_every
        self.concat = concat
        self.pad_index = pad_index
        self.on_device: list[Any] = []
        self.on_host: list[Any] = []

    def add(self, value: Any) -> None:
        if value is None:
            return
        self.on_device.append(value)
        if self.offload_every and len(self.on_device) >= self.offload_every:
            self.offload()

    def offload(self) -> None:
        if not self.on_device:
            return
        if self.concat:
            self.on_host.append(to_numpy(pad_and_concat(self.on_device, self.pad_index)))
        else:
            self.on_host.extend(to_numpy(v) for v in self.on_device)
        self.on_device = []

    def result(self) -> Any:
        self.offload()
        if not self.on_host:
            return None
        if not self.concat:
            return self.on_host
        return pad_and_concat(self.on_host, self.pad_index) if len(self.on_host) > 1 else self.on_host[0]


class PredictionCollector:
    """The four streams an evaluation gathers: per-sample losses, predictions, labels, inputs.

    Losses are always kept (they make ``<prefix>_loss``); the others only with ``keep`` (not
    with ``batch_eval_metrics``, whose point is to keep nothing).
    """

    def __init__(self, offload_every: Optional[int], concat: bool, keep: bool = True) -> None:
        self.keep = keep
        self.losses = Accumulator(offload_every)
        self.predictions = Accumulator(offload_every, concat=concat)
        self.labels = Accumulator(offload_every, concat=concat)
        self.inputs = Accumulator(offload_every, concat=concat)

    def add(self, losses: Any, predictions: Any, labels: Any, inputs: Any) -> None:
        self.losses.add(losses)
        if self.keep:
            self.predictions.add(predictions)
            self.labels.add(labels)
            self.inputs.add(inputs)

    def result(self, num_samples: int) -> tuple[Any, Any, Any, Any]:
        """``(losses, predictions, labels, inputs)`` as numpy, cut to ``num_samples`` (padding dropped)."""
        return tuple(_cut(part.result(), num_samples) for part in (self.losses, self.predictions, self.labels, self.inputs))


def _cut(value: Any, num_samples: int) -> Any:
    """Cut padded samples off; per-batch lists (``eval_do_concat_batches false``) stay as they are."""
    if value is None or isinstance(value, list):
        return value
    return truncate(value, num_samples)
