"""Turning a user's module into FSDP2 units, and building one too big for a single process.

``shard_model`` applies ``fully_shard`` to the chosen submodules (bottom-up) and then to the
root, so each unit all-gathers only its own parameters. Which submodules become units follows
the seeds: layer classes by name (``transformer_layer_cls_to_wrap``, or the model's
``_no_split_modules`` for plain ``auto_wrap``), or a parameter count (``min_num_params``).

Rank-0 loading (``cpu_ram_efficient_loading``): only the first process builds the model with
real weights (whatever its builder does: ``from_pretrained``, a loaded state dict, its own
initialisation); every other process builds it inside ``parameters_on_meta``, so its parameters
take no memory (buffers stay real: they are small and often computed in ``__init__``). Before
sharding, ``empty_parameters`` keeps rank 0's full weights aside and empties its parameters
too (and any other rank's that were built in full), so every rank shards the same empty
model, tensor-parallel split included; after ``fully_shard``, ``fill_from_rank0`` allocates
only each rank's shards and fills them from rank 0's weights one tensor at a time (torch's ``set_model_state_dict`` with ``broadcast_from_rank0``), then sends
rank 0's buffers, which a state dict leaves out when they are not persistent. Replaying an
initialisation on every rank instead would be right only for models that initialise through
``reset_parameters`` in construction order, and would throw loaded weights away.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from torch import nn

from treadle.errors import UsageError
from treadle_fsdp.options import FsdpSettings


# ----------------------------------------------------------------------------- units


def choose_units(model: nn.Module, settings: FsdpSettings) -> list[nn.Module]:
    """The submodules that get their own ``fully_shard``, innermost first (the root is not among them)."""
    if settings.wrap == "none":
        return []
    if settings.wrap == "size":
        return _size_units(model, settings.min_num_params)
    names = settings.layer_classes
    if settings.wrap == "auto":
        names = list(getattr(model, "_no_split_modules", None) or [])
        if not names:
            raise UsageError(
                f"--fsdp auto_wrap: {type(model).__name__} does not say which layers to wrap (it has no "
                "_no_split_modules); set fsdp_config transformer_layer_cls_to_wrap (class names) or min_num_params"
            )
    units = [m for m in _post_order(model) if m is not model and type(m).__name__ in names]
    if not units:
        present = sorted({type(m).__name__ for m in model.modules() if m is not model})
        raise UsageError(
            f"fsdp_config transformer_layer_cls_to_wrap={names}: {type(model).__name__} has no submodule of "
            f"such a class; its classes are: {', '.join(present) or 'none'}"
        )
    return units


def _post_order(module: nn.Module) -> Iterator[nn.Module]:
    for child in module.children():
        yield from _post_order(child)
    yield module


def _size_units(model: nn.Module, min_params: int) -> list[nn.Module]:
    """Post-order: a submodule whose parameters not yet in a unit reach ``min_params`` becomes one."""
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> int:
        pending = sum(p.numel() for p in module.parameters(recurse=False))
        pending += sum(visit(child) for child in module.children())
        if module is not model and pending >= min_params:
            units.append(module)
            return 0
        return pending

    visit(model)
    return units


def shard_model(
    model: nn.Module,
    mesh: Any,
    settings: FsdpSettings,
    *,
    param_dtype: Optional[torch.dtype],
    pin_memory: bool,
) -> list[nn.Module]:
    """Apply activation checkpointing and ``fully_shard`` per unit, then to the root; returns the units."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    units = choose_units(model, settings)
    options: dict[str, Any] = {
        "mesh": mesh,
        "reshard_after_forward": settings.reshard_after_forward,
        "offload_policy": CPUOffloadPolicy(pin_memory=pin_memory) if settings.offload else OffloadPolicy(),
    }
    if param_dtype is not None:
        # gradients are reduced in float32: the low-precision copy is for compute only
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    if settings.activation_checkpointing:
        from torch.distributed._composable import checkpoint  # keeps parameter names (no wrapper module)

        for unit in units:
            checkpoint(unit)
    for unit in units:
        fully_shard(unit, **options)
    fully_shard(model, **options)  # FSDP2 itself keeps the root unsharded between forward and backward
    if settings.forward_prefetch:
        in_forward_order = [m for m in model.modules() if any(m is u for u in units)]
        for current, following in zip(in_forward_order, in_forward_order[1:]):
            current.set_modules_to_forward_prefetch([following])
    return units


def broadcast_from_rank0(model: nn.Module) -> None:
    """``sync_module_states``: every process starts from rank 0's parameters and buffers."""
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


# ----------------------------------------------------------------------------- meta-device init


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on the meta device (the ranks that receive rank 0's weights).

    Each parameter is moved to meta as it is registered, so no full-size weight is ever
    written to (the brief ``torch.empty`` of a layer's constructor touches no memory); a
    parameter assigned twice (tied weights) stays one object.
    """
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def meta_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.is_meta]


def has_meta_parameters(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def empty_parameters(model: nn.Module) -> dict[str, Any]:
    """Move the parameters to meta and return the state dict they made up (rank 0 keeps it where
    it was built, e.g. on the CPU, to send it after sharding); tied parameters stay tied."""
    state = model.state_dict()
    empty: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is None or param.is_meta:
                continue
            if id(param) not in empty:
                empty[id(param)] = type(param)(param.detach().to("meta"), requires_grad=param.requires_grad)
            module._parameters[name] = empty[id(param)]
    return state


def fill_from_rank0(model: nn.Module, device: torch.device, rank0_state: dict[str, Any]) -> None:
    """Allocate the local shards of a sharded empty model on ``device`` (the CPU when FSDP offloads
    them) and fill them from rank 0's full weights (``rank0_state``: rank 0's state dict, empty on
    the others); then every buffer is rank 0's."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model._apply(lambda t: torch.empty_like(t, device=device) if t.is_meta else t)  # FSDP2 re-registers its shards
    # one tensor at a time: a receiving rank holds one full tensor besides its shards
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, rank0_state, options=options)
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
