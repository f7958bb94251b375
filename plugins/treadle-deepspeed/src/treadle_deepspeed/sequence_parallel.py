"""ALST/Ulysses sequence parallelism on DeepSpeed: each of ``sp`` processes holds a slice of every sequence.

``parallelism_config={"sp_size": N}`` groups the processes in blocks of N consecutive ranks.
A block trains on one batch (the sampler shards over the data-parallel blocks only) and every
rank of it computes on its own contiguous slice of each sequence. Everything outside attention
is per token, so a slice is enough; attention needs the whole sequence, and DeepSpeed's
all-to-all attention provides it: before the attention kernel the heads are scattered and the
sequence gathered (each rank then attends over the full sequence for ``heads / N`` heads), after
it the exchange is reversed. Its backward is the reverse exchange, so gradients reach every
slice.

The pieces used are DeepSpeed's own:

* groups: ``deepspeed.runtime.sequence_parallel.parallel_state_sp`` builds the sequence-parallel
  groups and the sequence-data-parallel group; handed to ``deepspeed.initialize`` as ``mpu``,
  it makes the engine reduce gradients over all ranks, summing over a block and averaging over
  the data-parallel blocks (ZeRO partitions over the same group);
* attention: ``UlyssesSPAttentionHF`` for transformers models (swapped into transformers'
  attention interface under the model's ``attn_implementation``) and ``DistributedAttention``
  around ``torch.nn.functional.scaled_dot_product_attention`` for plain torch models. Either is
  routed only inside ``SequenceParallel.active`` (the training micro-batch); evaluation and
  prediction compute whole sequences with the model's own attention.

What a model must provide (checked, with a message otherwise): a ``position_ids`` argument
(positions are made before the split, so they stay global on every slice), attention through
one of the two routes above without an explicit mask (causal attention says ``is_causal``), and
a head count divisible by N. A causal LM's labels are shifted before the split: transformers
models and models whose forward takes ``shift_labels`` get them, so no target is lost at a
slice boundary.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from treadle.components import MicroBatch
from treadle.errors import UsageError

IGNORE_INDEX = -100
UNSUPPORTED_HF_ATTENTION = ("eager", "paged|eager")
"""transformers attention implementations that need a full 4-D mask, which a slice cannot build."""


# -- groups ------------------------------------------------------------------------------------

def sequence_parallel_state(sp_size: int) -> Any:
    """DeepSpeed's sequence-parallel ``mpu`` with groups of ``sp_size`` consecutive ranks.

    Groups already built for this size in this process are reused (several runs in one launch
    share the process group); groups of another size are released and rebuilt.
    """
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as state

    group = getattr(state, "_SEQUENCE_PARALLEL_GROUP", None)
    if group is not None:
        try:
            if dist.get_world_size(group) == sp_size:
                return state
        except (RuntimeError, ValueError):  # a group of a destroyed process group
            pass
        _release(state)
    state.initialize_sequence_parallel(sequence_parallel_size=sp_size)
    return state


def data_parallel_group(sp_size: int) -> Any:
    """The ranks holding the same slice index in each block (every rank builds every group, in order)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    mine = None
    for index in range(sp_size):
        group = dist.new_group(list(range(index, world, sp_size)))
        if rank % sp_size == index:
            mine = group
    return mine


def forget_engine_groups(state: Any, *, world_destroyed: bool) -> None:
    """After a run: DeepSpeed's module-level ``mpu`` must not carry over into a later engine."""
    from deepspeed.utils import groups

    if getattr(groups, "mpu", None) is state:
        groups.mpu = None
    if world_destroyed:
        _release(state)


def _release(state: Any) -> None:
    """Drop DeepSpeed's references to its sequence-parallel groups (its own release, where it has one)."""
    release = getattr(state, "_release_sequence_parallel_groups", None)
    if release is not None:
        release()
    else:
        state._SEQUENCE_PARALLEL_GROUP = state._SEQUENCE_DATA_PARALLEL_GROUP = None


# -- the model's side --------------------------------------------------------------------------

def _parameters(module: torch.nn.Module) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return {}


def is_transformers_model(module: torch.nn.Module) -> bool:
    config = getattr(module, "config", None)
    return config is not None and hasattr(config, "_attn_implementation") and hasattr(module, "loss_function")


def takes_argument(module: torch.nn.Module, name: str) -> bool:
    """Whether ``module.forward`` names ``name`` (a transformers model's ``**kwargs`` reach its loss and attention)."""
    parameters = _parameters(module)
    if name in parameters:
        return True
    keywords = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return keywords and is_transformers_model(module)


def _shifts_labels(module: torch.nn.Module) -> bool:
    """A causal LM whose loss shifts the labels itself (and accepts them pre-shifted as ``shift_labels``)."""
    if "shift_labels" in _parameters(module):
        return True
    return is_transformers_model(module) and getattr(module, "loss_type", None) == "ForCausalLM"


def head_counts(module: torch.nn.Module) -> list[tuple[str, int]]:
    """``(what, count)`` for the attention head counts a model declares (its config, or its modules)."""
    found = []
    config = getattr(module, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    for name in ("num_attention_heads", "num_key_value_heads"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            found.append((f"config.{name}", value))
    if found:
        return found
    for path, sub in module.named_modules():
        for name in ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads"):
            value = getattr(sub, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                found.append((f"{path or type(module).__name__}.{name}", value))
                break
    return found


def check_model(module: torch.nn.Module, sp_size: int) -> None:
    """Refuse, with the reason, a model that sequence parallelism would compute wrongly."""
    if not takes_argument(module, "position_ids"):
        raise UsageError(
            f"parallelism_config sp_size={sp_size}: {type(module).__name__}.forward takes no position_ids. Each process "
            "holds a slice of the sequence, so positions made inside the model would restart at 0 on every slice; add a "
            "position_ids argument (the strategy fills it with the global positions)"
        )
    wrong = [(what, count) for what, count in head_counts(module) if count % sp_size]
    if wrong:
        what, count = wrong[0]
        raise UsageError(
            f"parallelism_config sp_size={sp_size}: the model has {count} attention heads ({what}), which do not divide "
            f"by {sp_size}; Ulysses attention gives each process heads/sp_size of them. Choose an sp_size that divides "
            f"{count}"
        )
    if is_transformers_model(module):
        implementation = module.config._attn_implementation
        if implementation in UNSUPPORTED_HF_ATTENTION:
            raise UsageError(
                f"parallelism_config sp_size={sp_size}: attn_implementation={implementation!r} needs the full attention "
                "mask, which no slice holds; load the model with attn_implementation=\"sdpa\" (or a flash / flex attention)"
            )


# -- the inputs --------------------------------------------------------------------------------

def _labels_count(labels: torch.Tensor | None) -> int | None:
    if labels is None or labels.is_floating_point():
        return None
    return int((labels != IGNORE_INDEX).sum())


def split_inputs(
    inputs: dict[str, Any], module: torch.nn.Module, sp_size: int, sp_rank: int, label_name: str = "labels"
) -> tuple[dict[str, Any], int | None, int | None]:
    """This rank's contiguous slice of every sequence tensor, and the label items of the slice and of the whole.

    Sequence tensors are the ``(batch, sequence, ...)`` ones as long as ``input_ids`` (or the
    first such tensor); other values are left whole. ``position_ids`` are made first when
    missing and labels are shifted first for a causal LM, so both stay correct across slices.
    """
    key = "input_ids" if isinstance(inputs.get("input_ids"), torch.Tensor) else next(
        (k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.dim() >= 2), None
    )
    if key is None:
        raise UsageError(
            f"parallelism_config sp_size={sp_size}: the batch holds no (batch, sequence) tensor to split "
            f"(keys: {', '.join(inputs)}); sequence parallelism needs token sequences such as input_ids"
        )
    batch, length = inputs[key].shape[:2]
    if length % sp_size:
        raise UsageError(
            f"parallelism_config sp_size={sp_size}: a batch's sequence length is {length}, which does not divide by "
            f"{sp_size}; pad every batch to a multiple of {sp_size} (e.g. a collator with pad_to_multiple_of={sp_size})"
        )
    whole = dict(inputs)
    if "position_ids" not in whole:
        whole["position_ids"] = torch.arange(length, device=inputs[key].device).expand(batch, length)
    counted = whole.get(label_name)
    if isinstance(counted, torch.Tensor) and counted.dim() >= 2 and "shift_labels" not in whole and _shifts_labels(module):
        whole["shift_labels"] = torch.nn.functional.pad(counted[:, 1:], (0, 1), value=IGNORE_INDEX)
    if isinstance(whole.get("shift_labels"), torch.Tensor):
        counted = whole["shift_labels"]
    chunk = length // sp_size
    part = {
        name: value[:, sp_rank * chunk:(sp_rank + 1) * chunk].contiguous()  # a loss may view() it flat
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == (batch, length) else value
        for name, value in whole.items()
    }
    counted_part = part.get("shift_labels", part.get(label_name))
    total = _labels_count(counted if isinstance(counted, torch.Tensor) else None)
    local = _labels_count(counted_part if isinstance(counted_part, torch.Tensor) else None)
    return part, local, total


# -- attention ---------------------------------------------------------------------------------

class _TorchAttention:
    """``scaled_dot_product_attention`` for ``(batch, heads, slice, dim)`` tensors through DeepSpeed's
    ``DistributedAttention`` (heads scattered, sequence gathered, then back)."""

    def __init__(self, original: Callable, group: Any, sp_size: int) -> None:
        from deepspeed.sequence.layer import DistributedAttention

        self.original, self.sp_size = original, sp_size
        # DistributedAttention works on (batch, sequence, heads, dim): scatter dim 2, gather dim 1
        self.exchange = DistributedAttention(self._local, group, scatter_idx=2, gather_idx=1)
        self.calls = 0

    def _local(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out = self.original(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), **kwargs)
        return out.transpose(1, 2)

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
                 dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                 enable_gqa: bool = False) -> torch.Tensor:
        if attn_mask is not None:
            raise UsageError(
                f"parallelism_config sp_size={self.sp_size}: scaled_dot_product_attention got an attn_mask, but under "
                "sequence parallelism each process holds a slice of the sequence and the mask would not match the "
                "gathered one; use is_causal=True instead of a causal mask"
            )
        if query.dim() != 4:
            raise UsageError(
                f"parallelism_config sp_size={self.sp_size}: scaled_dot_product_attention got {query.dim()}-D queries; "
                "sequence parallelism routes (batch, heads, sequence, head_dim) attention"
            )
        for name, tensor in (("query", query), ("key", key)):
            if tensor.shape[1] % self.sp_size:
                raise UsageError(
                    f"parallelism_config sp_size={self.sp_size}: the attention's {name} has {tensor.shape[1]} heads, "
                    f"which do not divide by {self.sp_size}; choose an sp_size that divides the head count"
                )
        self.calls += 1
        out = self.exchange(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), 0, None,
                            dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        return out.transpose(1, 2)


class _TransformersAttention:
    """DeepSpeed's ``UlyssesSPAttentionHF`` in front of the model's own attention function (one per batch size)."""

    def __init__(self, module: torch.nn.Module, original: Callable, implementation: str, group: Any) -> None:
        self.module, self.original, self.implementation, self.group = module, original, implementation, group
        self._by_batch: dict[int, Any] = {}
        self.calls = 0

    def _ulysses(self, batch_size: int) -> Any:
        if batch_size not in self._by_batch:
            from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

            text = self.module.config.get_text_config()
            heads = text.num_attention_heads
            attention = UlyssesSPAttentionHF(
                attn=self.original, batch_size=batch_size, attn_head_count=heads,
                attn_head_size=getattr(text, "head_dim", None) or text.hidden_size // heads,
                kv_head_count=getattr(text, "num_key_value_heads", None) or heads,
                num_hidden_layers=text.num_hidden_layers, process_group=self.group, seq_length_is_variable=True,
            )
            attention.core_attn_implementation = self.implementation
            self._by_batch[batch_size] = attention
        return self._by_batch[batch_size]

    def __call__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: Any, *args: Any, **kwargs: Any) -> Any:
        # the mask was built for a slice; causal attention over the gathered sequence needs none
        # (a flex BlockMask is rebuilt for the full length by DeepSpeed)
        if self.implementation != "flex_attention":
            attention_mask = None
        self.calls += 1
        return self._ulysses(query.shape[0])(module, query, key, value, attention_mask, *args, **kwargs)


class SequenceParallel:
    """One run's sequence parallelism: its groups, the model's attention route, the input split."""

    def __init__(self, sp_size: int) -> None:
        self.sp_size = sp_size
        self.state = sequence_parallel_state(sp_size)
        self.group = self.state.get_sequence_parallel_group()
        self.rank = self.state.get_sequence_parallel_rank()
        self.module: torch.nn.Module | None = None
        self._route: Any = None

    def attach(self, module: torch.nn.Module) -> None:
        """Check the model and pick its attention route (transformers' interface, or torch's SDPA)."""
        check_model(module, self.sp_size)
        self.module = module
        if is_transformers_model(module):
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            implementation = module.config._attn_implementation
            self._route = _TransformersAttention(module, ALL_ATTENTION_FUNCTIONS[implementation], implementation, self.group)
        else:
            self._route = _TorchAttention(torch.nn.functional.scaled_dot_product_attention, self.group, self.sp_size)

    @contextlib.contextmanager
    def active(self, inputs: dict[str, Any], label_name: str = "labels") -> Iterator[MicroBatch]:
        """This rank's slice of ``inputs``, with Ulysses attention routed until the context ends (after backward)."""
        assert self.module is not None, "SequenceParallel.attach(model) comes first"
        part, local, total = split_inputs(inputs, self.module, self.sp_size, self.rank, label_name)
        calls = self._route.calls
        with self._routed():
            yield MicroBatch(part, splits=self.sp_size, local_items=local, total_items=total)
        if self._route.calls == calls:
            raise UsageError(
                f"parallelism_config sp_size={self.sp_size}: the model's forward never reached Ulysses attention, so "
                "each process attended over its slice alone. A plain torch model must call "
                "torch.nn.functional.scaled_dot_product_attention (looked up at call time); a transformers model needs "
                "an attn_implementation from transformers' attention interface (sdpa, flash, flex)"
            )

    @contextlib.contextmanager
    def _routed(self) -> Iterator[None]:
        if isinstance(self._route, _TransformersAttention):
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            key = self._route.implementation
            local = ALL_ATTENTION_FUNCTIONS._local_mapping
            had, before = key in local, local.get(key)
            ALL_ATTENTION_FUNCTIONS[key] = self._route
            try:
                yield
            finally:
                if had:
                    local[key] = before
                else:
                    local.pop(key, None)
            return
        functional = torch.nn.functional
        before = functional.scaled_dot_product_attention
        functional.scaled_dot_product_attention = self._route
        try:
            yield
        finally:
            functional.scaled_dot_product_attention = before


__all__ = ["SequenceParallel", "check_model", "data_parallel_group", "forget_engine_groups", "split_inputs"]
