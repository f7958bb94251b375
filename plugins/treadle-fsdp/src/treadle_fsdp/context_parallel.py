"""Context parallel: each training micro-batch's sequences split over the ``cp`` ranks, on torch's
own engine (``torch.distributed.tensor.experimental.context_parallel``).

Inside torch's context every ``F.scaled_dot_product_attention`` call becomes ring attention:
each cp rank keeps its slice of the queries and the key/value blocks travel around the cp group,
so no rank ever holds the whole sequence's activations. Everything else in a transformer
(embeddings, MLPs, norms, the LM head, the loss) is position-wise and simply runs on the slice.
``split`` prepares one micro-batch for that; the strategy keeps the context open over forward
*and* backward (``Strategy.micro_batch``), because the backward rotates the blocks again.

The rules a micro-batch follows here, and why:

* **Which tensors are split.** Every tensor input of shape ``(batch, sequence, ...)`` whose
  sequence length is that of ``input_ids`` (or ``inputs_embeds``) is split along dimension 1;
  anything else (a per-sample value) reaches every cp rank whole. Labels must be per token:
  a per-sample label (sequence classification) would be predicted from a slice only.
* **Positions stay global.** A slice starts somewhere in the middle of its sequence, so a
  model that numbers positions itself (``arange`` of the local length) would give every slice
  positions 0, 1, ... When the batch has no ``position_ids`` and the model's forward takes
  them, the whole sequence's positions are created before splitting and split with it.
* **Labels are aligned before splitting.** A causal LM that shifts ``labels`` by one inside its
  forward would, on a slice, pair each slice's last position with nothing and shift across
  the load-balanced chunks wrongly. So when the model's forward accepts ``shift_labels``
  (transformers' causal LMs do, through ``**kwargs``, and use it instead of shifting) and the
  batch has none, ``shift_labels = labels[:, 1:]`` padded with ``-100`` is built on the whole
  sequence and split with it. A model that takes only ``labels`` must take them aligned with
  its outputs (label ``t`` is the target of position ``t``); one that shifts internally and
  offers no ``shift_labels`` trains on misaligned targets under cp, which nothing here can see.
* **No masks, but right padding.** Torch's ring attention computes causal or full attention,
  nothing else, so an ``attention_mask`` with zeros cannot be passed on. Padding on the right
  of a causal LM needs no mask: no real token attends to a later position, so the padding
  changes only the outputs at padded positions, whose labels are set to -100 here (and the
  mask becomes ones). For a transformers causal LM (``treadle.model_io.loss_shifts_labels``)
  right padding is therefore accepted; any other zeros (left padding, a model that may attend
  both ways, a custom mask) are refused with a message, not silently ignored (pack sequences
  to a fixed length instead). When a transformers model gets no mask, a mask of ones is added: given ``position_ids``
  but no mask, it reads packed sequences from every jump in the positions, and a
  load-balanced slice (positions 0, 1, 6, 7 on rank 0 of 2) has such jumps, so it would build
  an explicit block mask that ring attention cannot take; with a mask of ones it calls SDPA
  with ``is_causal`` and no mask. (Other models keep what they were given: one might turn a
  mask of ones into an explicit SDPA mask.)
* **SDPA only.** Attention that does not call ``F.scaled_dot_product_attention`` is not split by
  torch and would silently attend within each slice; a transformers model whose
  ``attn_implementation`` is not ``sdpa`` is refused (other models are trusted to use SDPA).
* **Lengths.** The sequence length must divide by ``cp_size``. When it divides by
  ``2 * cp_size`` torch balances causal work by giving each rank one chunk from the head and
  the mirrored one from the tail (otherwise rank 0 would have almost nothing to attend to).
  A transformers causal LM's micro-batch is padded on the right to a multiple of
  ``2 * cp_size`` (``pad_to_multiple``), so any length works; other models must come so.
* **Loss weights.** Label tokens (``!= -100``, of ``shift_labels`` when present) are counted in
  this rank's slice and in the whole micro-batch, so the loop weighs this slice's mean loss by
  its share (``MicroBatch.loss_weight``); gradients are then averaged over the flattened
  ``dp_shard x cp`` mesh FSDP shards over, giving the whole micro-batch's gradient.

Torch maps only CUDA's flash, memory-efficient and cuDNN attention kernels to ring attention;
on the CPU the first attention call fails inside torch, which ``split`` turns into one
``UsageError`` naming the operator and the device.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator
from typing import Any

import torch
from treadle.components import MicroBatch
from treadle.errors import UsageError
from treadle.model_io import loss_shifts_labels

IGNORE_INDEX = -100
SEQUENCE_KEYS = ("input_ids", "inputs_embeds")
LABEL_KEYS = ("shift_labels", "labels")  # the loss reads shift_labels first when a model has both


def accepts(module: torch.nn.Module, name: str, by_name: bool = False) -> bool:
    """Whether ``module``'s forward takes an argument ``name``: by name, or (``by_name`` False) also
    through ``**kwargs`` (how transformers models receive ``shift_labels``)."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or (not by_name and p.kind is inspect.Parameter.VAR_KEYWORD) for p in parameters)


def sequence_length(inputs: dict[str, Any]) -> int:
    for key in SEQUENCE_KEYS:
        value = inputs.get(key)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[1])
    found = ", ".join(f"{k}{tuple(v.shape)}" for k, v in inputs.items() if isinstance(v, torch.Tensor)) or "none"
    raise UsageError(
        "context parallel splits sequences along input_ids (or inputs_embeds) of shape (batch, sequence); "
        f"this batch has no such input (tensors: {found})"
    )


def right_padded(mask: torch.Tensor) -> bool:
    """Whether every row of a 2-D mask is ones, then zeros (padding on the right only)."""
    return mask.dim() == 2 and bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool(((mask == 0) | (mask == 1)).all())


def check(inputs: dict[str, Any], length: int, cp_size: int, causal: bool = False) -> None:
    """Refuse what ring attention cannot compute or a slice cannot represent (one message each).

    ``causal``: the model is a causal LM (``loss_shifts_labels``), for which right padding is exact.
    """
    if length % cp_size:
        raise UsageError(
            f"context parallel: a sequence length of {length} does not divide by cp_size={cp_size}; make every "
            f"training sequence a multiple of {2 * cp_size} tokens long (2 x cp_size also balances causal attention)"
        )
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and (mask.dim() != 2 or mask.shape[1] != length):
        raise UsageError(
            f"context parallel: attention_mask of shape {tuple(mask.shape)} is not (batch, {length}); only a 2-D mask "
            "can be split with the sequence"
        )
    if isinstance(mask, torch.Tensor) and not bool((mask == 1).all()) and not (causal and right_padded(mask)):
        fix = ("pad on the right (the tokenizer's padding_side='right'): right padding of a causal LM is exact without a mask"
               if causal else
               "right padding is handled for transformers causal LMs only; pack sequences to a fixed length without "
               "padding (then drop the mask or leave it all ones)")
        raise UsageError(
            "context parallel: the batch has an attention_mask with zeros that is not right padding of a causal LM, but "
            f"torch's ring attention computes only causal or full attention; {fix}, or set cp_size=1"
        )
    for key in LABEL_KEYS:
        labels = inputs.get(key)
        if isinstance(labels, torch.Tensor) and (labels.dim() < 2 or labels.shape[1] != length):
            raise UsageError(
                f"context parallel: {key} of shape {tuple(labels.shape)} are not one per token (batch, {length}); "
                "a per-sample label would be predicted from a slice of its sequence, so cp trains token-level losses only"
            )


def attention_implementation(model: torch.nn.Module) -> str | None:
    """A transformers model's ``attn_implementation`` (None for other models)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def check_model(model: torch.nn.Module) -> None:
    implementation = attention_implementation(model)
    if implementation is not None and implementation != "sdpa":
        raise UsageError(
            f"context parallel: the model's attn_implementation is {implementation!r}, which torch's ring attention "
            "does not split (each rank would attend within its slice only); load the model with "
            "attn_implementation='sdpa', or set cp_size=1"
        )


def complete(inputs: dict[str, Any], model: torch.nn.Module, length: int) -> dict[str, Any]:
    """The inputs with the whole sequence's ``position_ids`` and ``shift_labels`` added where the model takes
    them (``position_ids`` by name, ``shift_labels`` also through ``**kwargs``), and a transformers model's
    ``attention_mask`` of ones."""
    inputs = dict(inputs)
    ids = next(inputs[k] for k in SEQUENCE_KEYS if isinstance(inputs.get(k), torch.Tensor))
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and not bool((mask == 1).all()):  # right padding (``check`` allowed it)
        padding = mask == 0
        for key in LABEL_KEYS:  # no target at a padded position; the last real token's next one is padding
            if isinstance(inputs.get(key), torch.Tensor):
                inputs[key] = inputs[key].masked_fill(padding, IGNORE_INDEX)
        inputs["attention_mask"] = torch.ones_like(mask)
    if inputs.get("position_ids") is None and accepts(model, "position_ids", by_name=True):
        inputs["position_ids"] = torch.arange(length, device=ids.device).unsqueeze(0).expand(ids.shape[0], -1)
    if inputs.get("attention_mask") is None and attention_implementation(model) is not None:
        inputs["attention_mask"] = torch.ones(ids.shape[0], length, dtype=torch.long, device=ids.device)
    labels = inputs.get("labels")
    if inputs.get("shift_labels") is None and isinstance(labels, torch.Tensor) and accepts(model, "shift_labels"):
        inputs["shift_labels"] = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return inputs


def pad_to_multiple(inputs: dict[str, Any], length: int, multiple: int) -> tuple[dict[str, Any], int]:
    """A causal LM's micro-batch padded on the right to a multiple of ``multiple`` tokens (its new length).

    Sequences then split evenly (and, at ``2 x cp_size``, with balanced causal work). The padding
    is right padding as ``complete`` treats it: labels -100, mask zeros, positions counting on,
    other per-token inputs 0; no real token attends to it.
    """
    extra = -length % multiple
    if not extra:
        return inputs, length
    inputs = dict(inputs)
    ids = next(inputs[k] for k in SEQUENCE_KEYS if isinstance(inputs.get(k), torch.Tensor))
    if not isinstance(inputs.get("attention_mask"), torch.Tensor):
        inputs["attention_mask"] = torch.ones(ids.shape[0], length, dtype=torch.long, device=ids.device)
    for key, value in list(inputs.items()):
        if not (isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == length):
            continue
        if key == "position_ids":
            steps = torch.arange(1, extra + 1, device=value.device, dtype=value.dtype)
            tail = value[:, -1:] + steps.view(1, -1, *([1] * (value.dim() - 2)))
        else:
            fill = IGNORE_INDEX if key in LABEL_KEYS else 0
            tail = value.new_full((value.shape[0], extra, *value.shape[2:]), fill)
        inputs[key] = torch.cat([value, tail], dim=1)
    return inputs, length + extra


def label_items(inputs: dict[str, Any]) -> int | None:
    """Label tokens (not -100) of the labels the loss reads; None without integer labels."""
    for key in LABEL_KEYS:
        labels = inputs.get(key)
        if isinstance(labels, torch.Tensor):
            if labels.is_floating_point():
                return labels.numel()
            return int((labels != IGNORE_INDEX).sum())
    return None


@contextlib.contextmanager
def split(inputs: dict[str, Any], model: torch.nn.Module, cp_mesh: Any, rotate: str | None = None) -> Iterator[MicroBatch]:
    """This rank's slice of a micro-batch, inside torch's context-parallel dispatch (open until the caller's
    backward is done)."""
    from torch.distributed.tensor.experimental import context_parallel

    cp_size = cp_mesh.size()
    check_model(model)
    length = sequence_length(inputs)
    causal = loss_shifts_labels(model)
    if causal:  # any length splits, with balanced causal work
        inputs, length = pad_to_multiple(inputs, length, 2 * cp_size)
    check(inputs, length, cp_size, causal=causal)
    whole = complete(inputs, model, length)
    total = label_items(whole)
    names = [k for k, v in whole.items() if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[1] == length]
    # torch shards its buffers in place; copies keep the loop's batch whole (they are ids, small next to activations)
    buffers = [whole[k].clone() for k in names]
    if rotate:
        _set_rotation(rotate)
    try:
        with context_parallel(cp_mesh, buffers=buffers, buffer_seq_dims=[1] * len(buffers), no_restore_buffers=set(buffers)):
            part = {**whole, **dict(zip(names, buffers, strict=True))}
            yield MicroBatch(part, splits=cp_size, local_items=label_items(part), total_items=total)
    except NotImplementedError as exc:
        problem = unsupported_attention(exc, device_of(whole))
        if problem is None:
            raise
        raise UsageError(problem) from None


def _set_rotation(method: str) -> None:
    """torch's (process-wide) choice of how key/value blocks travel (older torch keeps it in ``_attention``)."""
    try:
        from torch.distributed.tensor.experimental._context_parallel import set_rotate_method
    except ImportError:
        from torch.distributed.tensor.experimental._attention import set_rotate_method
    set_rotate_method(method)


def device_of(inputs: dict[str, Any]) -> str:
    for value in inputs.values():
        if isinstance(value, torch.Tensor):
            return value.device.type
    return "?"


_NO_STRATEGY = re.compile(r"Operator (\S+) does not have a sharding strategy registered")


def unsupported_attention(exc: BaseException, device: str) -> str | None:
    """The message for torch's missing ring-attention kernel (None: some other NotImplementedError)."""
    text = str(exc)
    found = _NO_STRATEGY.search(text)
    if found and "scaled_dot_product" in found.group(1):
        op = found.group(1)
    elif "CP only supports" in text:
        op = "this attention kernel"
    else:
        return None
    return (
        f"context parallel: {op} has no ring-attention implementation on {device}: torch's context parallel "
        "splits only CUDA's flash, memory-efficient and cuDNN scaled_dot_product_attention kernels. Run cp_size>1 "
        "on CUDA GPUs (attention through torch.nn.functional.scaled_dot_product_attention, e.g. "
        "attn_implementation='sdpa'), or set cp_size=1"
    )


def rotate_method(handler: Any) -> str | None:
    """``cp_handler``'s key/value rotation (accelerate's ``cp_comm_strategy``): 'allgather' or 'alltoall'."""
    if handler is None:
        return None
    value = handler.get("cp_comm_strategy") if isinstance(handler, dict) else getattr(handler, "cp_comm_strategy", None)
    if value is None:
        return None
    if value not in ("allgather", "alltoall"):
        raise UsageError(f"parallelism_config: cp_handler cp_comm_strategy must be 'allgather' or 'alltoall', got {value!r}")
    return value


__all__ = ["pad_to_multiple", "rotate_method", "split", "unsupported_attention"]
