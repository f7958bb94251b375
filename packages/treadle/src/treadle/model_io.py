"""How the loop talks to an arbitrary model: batches in, loss and predictions out.

The Trainer accepts any ``nn.Module``: its forward may return a loss tensor, a dict (or a
transformers ``ModelOutput``) or an object with a ``loss`` attribute, or a tuple with the loss
first. Batches may be dicts (passed as keyword arguments), tuples such as a ``TensorDataset``'s
(matched to the forward's parameters by position) or a single tensor. Everything here is a pure
function of the model's signature and the batch, so the rules live in one place.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

import torch

from treadle.data import forward_parameters
from treadle.errors import UsageError

IGNORE_INDEX = -100
"""Label value that the loss (and the item count of gradient accumulation) ignores."""


def unwrap_compiled(model: Any) -> Any:
    return getattr(model, "_orig_mod", model)


def find_label_names(model: Any) -> list[str]:
    """The forward's parameters that carry labels (the seeds' default for ``label_names``)."""
    names, _ = forward_parameters(unwrap_compiled(model))
    labels = [n for n in names if "label" in n]
    if "QuestionAnswering" in type(model).__name__:
        labels += [n for n in ("start_positions", "end_positions") if n in names]
    return labels


def accepts_loss_kwargs(model: Any) -> bool:
    """Whether the model normalises its loss by a ``num_items_in_batch`` it is given.

    A model can say so with an ``accepts_loss_kwargs`` attribute; otherwise a forward with an
    explicit ``num_items_in_batch`` parameter counts as yes, and so does a transformers model
    whose forward takes ``**kwargs`` (transformers' rule: its loss functions read the count from
    them). Any other model's ``**kwargs`` is left alone: passing it an unexpected keyword could
    break a forward that forwards them elsewhere.
    """
    model = unwrap_compiled(model)
    declared = getattr(model, "accepts_loss_kwargs", None)
    if declared is not None:
        return bool(declared)
    names, takes_any = forward_parameters(model)
    return "num_items_in_batch" in names or (takes_any and _is_transformers_model(model))


def _is_transformers_model(model: Any) -> bool:
    """A transformers PreTrainedModel (a user's subclass too), recognised without importing transformers."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.") for c in type(model).__mro__)


def main_input_name(model: Any, inputs: Mapping[str, Any]) -> Optional[str]:
    name = getattr(unwrap_compiled(model), "main_input_name", None)
    if name in inputs:
        return name
    if "input_ids" in inputs:
        return "input_ids"
    return next(iter(inputs), None)


class InputMapper:
    """Turns any batch into the keyword arguments of ``model.forward``."""

    def __init__(self, model: Any) -> None:
        self.names, self.var_kw = forward_parameters(unwrap_compiled(model))

    def __call__(self, batch: Any) -> dict[str, Any]:
        if isinstance(batch, dict):
            return batch
        if isinstance(batch, Mapping):  # e.g. a transformers BatchEncoding
            return dict(batch)
        parts = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        if len(parts) > len(self.names):
            raise UsageError(
                f"a batch has {len(parts)} parts but the model's forward takes {len(self.names)} "
                f"named arguments ({', '.join(self.names) or 'none'}); give forward a parameter per "
                "part (e.g. forward(self, x, labels=None)) or use a dataset of dicts"
            )
        return dict(zip(self.names, parts))


def move_to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device, non_blocking) for v in obj)
    return obj


def _get(outputs: Any, name: str) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def loss_from_outputs(outputs: Any, inputs: Mapping[str, Any], label_names: Sequence[str]) -> torch.Tensor:
    """The training loss in a model's outputs, or a ``UsageError`` that says what was returned."""
    if isinstance(outputs, torch.Tensor):
        loss = outputs
    elif isinstance(outputs, Mapping) or hasattr(outputs, "loss"):
        loss = _get(outputs, "loss")
    elif isinstance(outputs, (tuple, list)) and outputs:
        loss = outputs[0]
    else:
        loss = None
    if loss is None or not isinstance(loss, torch.Tensor):
        returned = ", ".join(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
        raise UsageError(
            f"the model returned no loss (it returned {returned}). The Trainer needs forward to "
            f"return a loss tensor, a dict or object with 'loss', or a tuple with the loss first. "
            f"Labels are passed as {', '.join(label_names) or '(no label_names found)'}; the batch "
            f"holds {', '.join(inputs)}. Set --label_names if the labels have another name."
        )
    if loss.dim() != 0:
        raise UsageError(
            f"the model returned a loss of shape {tuple(loss.shape)}; the Trainer needs a single "
            "number: reduce it (e.g. .mean()) or return a dict with 'loss' and 'logits'"
        )
    return loss


def split_outputs(outputs: Any, has_loss: bool, ignore_keys: Sequence[str] = ()) -> tuple[Optional[torch.Tensor], Any]:
    """``(loss, logits)`` of a model's outputs in evaluation; ``logits`` may be a tuple or None."""
    if isinstance(outputs, torch.Tensor):
        if has_loss and outputs.dim() == 0:
            return outputs, None
        return None, outputs
    if isinstance(outputs, Mapping):
        loss = outputs.get("loss") if has_loss else None
        rest = tuple(v for k, v in outputs.items() if k != "loss" and k not in ignore_keys and _is_tensors(v))
    elif isinstance(outputs, (tuple, list)):
        loss = outputs[0] if has_loss else None
        rest = tuple(outputs[1:] if has_loss else outputs)
    else:
        loss = getattr(outputs, "loss", None) if has_loss else None
        logits = getattr(outputs, "logits", None)
        rest = () if logits is None else (logits,)
    if not rest:
        return loss, None
    return loss, rest[0] if len(rest) == 1 else rest


def _is_tensors(value: Any) -> bool:
    """A tensor or a (nested) tuple of tensors: what can be gathered as predictions (not a cache object)."""
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and bool(value) and all(_is_tensors(v) for v in value)


def logits_of(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = _get(outputs, "logits")
    if logits is None and isinstance(outputs, (tuple, list)):
        logits = outputs[0]
    if logits is None:
        raise UsageError("label_smoothing_factor needs the model to return logits when called without labels")
    return logits


def loss_shifts_labels(model: Any) -> bool:
    """Whether the model's own loss scores position ``t`` against label ``t + 1`` (a causal LM).

    transformers' decoder-only language models take ``labels`` equal to their inputs and shift
    them inside the loss (``ForCausalLMLoss``, chosen by the model's ``loss_type``), so label
    position 0 is never a target. Counting items and smoothing labels must shift the same way.
    Decided without importing transformers: a model of it has already loaded it.
    """
    import sys

    model = unwrap_compiled(model)
    base = getattr(model, "get_base_model", None)  # a PEFT wrapper: its base model's loss
    if callable(base):
        model = base()
    losses = sys.modules.get("transformers.loss.loss_utils")
    if losses is None or not _is_transformers_model(model):
        return False
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False  # a decoder's labels are its targets already (seq2seq)
    causal = getattr(losses, "ForCausalLMLoss", None)
    loss_type = getattr(model, "loss_type", None)
    if causal is not None and getattr(losses, "LOSS_MAPPING", {}).get(loss_type) is causal:
        return True
    # a class name that names no loss (GPT2LMHeadModel: loss_type None) falls back to the causal
    # loss in transformers; it is a causal LM when the auto classes list it as one
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        return False
    names = {name for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
             for name in (value if isinstance(value, (list, tuple)) else (value,))}
    return loss_type is None and type(model).__name__ in names


def label_smoothed_loss(outputs: Any, labels: torch.Tensor, epsilon: float, shifted: bool = False) -> torch.Tensor:
    """Cross entropy against labels mixed with the uniform distribution (``label_smoothing_factor``).

    The target of the true class becomes ``1 - epsilon + epsilon / num_classes`` and every
    other class ``epsilon / num_classes``; positions labelled -100 are ignored. ``shifted``
    (a causal LM, ``loss_shifts_labels``): the logits at ``t`` predict label ``t + 1``.
    """
    logits = logits_of(outputs)
    if shifted:
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    num_classes = logits.shape[-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, num_classes).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, label_smoothing=epsilon
    )


def count_items(inputs: Mapping[str, Any], label_names: Sequence[str], shifted: bool = False) -> Any:
    """How many items a micro-batch's mean loss averages over (an int or a 0-dim tensor).

    Integer labels count their positions that are not -100 (tokens in a language model,
    samples in a classifier); float labels count their elements; without labels, the batch size.
    A batch's ``shift_labels`` (a padding-free collator's) are counted as they are; otherwise a
    model whose loss shifts its labels (``shifted``) has no target at position 0, which is left
    out. Used to weight micro-batches so that an accumulated step equals one big batch, and as
    ``num_items_in_batch``.
    """
    given = inputs.get("shift_labels")
    if isinstance(given, torch.Tensor) and not given.is_floating_point():
        return (given != IGNORE_INDEX).sum()
    for name in label_names:
        labels = inputs.get(name)
        if isinstance(labels, torch.Tensor):
            if labels.is_floating_point():
                return labels.numel()
            if shifted:
                labels = labels[..., 1:]
            return (labels != IGNORE_INDEX).sum()
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return 1


def neftune_hook(alpha: float) -> Any:
    """A forward hook adding NEFTune noise to embedding outputs while training.

    The noise is uniform in ``[-m, m]`` with ``m = alpha / sqrt(sequence_length * hidden_size)``;
    in evaluation the embeddings are left alone.
    """

    def add_noise(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        dims = output.size(-2) * output.size(-1) if output.dim() >= 2 else output.size(-1)
        magnitude = alpha / dims**0.5
        return output + torch.empty_like(output).uniform_(-magnitude, magnitude)

    return add_noise


_NORM_NAME = re.compile(r"layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def decay_parameter_names(model: torch.nn.Module) -> list[str]:
    """Parameter names that weight decay applies to: not biases, not normalisation layers.

    Normalisation layers are recognised by type (LayerNorm, RMSNorm, GroupNorm, batch norms)
    and, for home-made ones, by a module name containing ``norm``.
    """
    nn = torch.nn
    norm_types: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)
    if hasattr(nn, "RMSNorm"):
        norm_types += (nn.RMSNorm,)
    names = []
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            if isinstance(module, norm_types) or "bias" in param_name or _NORM_NAME.search(module_name.lower()):
                continue
            names.append(f"{module_name}.{param_name}" if module_name else param_name)
    return names
