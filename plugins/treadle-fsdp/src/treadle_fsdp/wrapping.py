"""Turning a user's module into FSDP2 units, and building one too big for a single process.

``shard_model`` applies ``fully_shard`` to the chosen submodules (bottom-up) and then to the
root, so each unit all-gathers only its own parameters. Which submodules become units follows
the seeds: layer classes by name (``transformer_layer_cls_to_wrap``, or the model's
``_no_split_modules`` for plain ``auto_wrap``), or a parameter count (``min_num_params``).

Meta-device initialisation (``cpu_ram_efficient_loading``): ``parameters_on_meta`` lets the
task build the model with every parameter on the meta device (buffers stay real: they are small
and often computed in ``__init__``). After sharding, ``fill_shards`` allocates only this
process's shards and fills them module by module: each module's parameters exist in full for
the length of its ``reset_parameters()`` call, then only the local shard is kept. Replaying
``reset_parameters`` in module order from the random state the model was built with gives the
same weights a normal build would (for models that initialise through ``reset_parameters`` in
construction order, as torch's layers do); a module that holds parameters but has no
``reset_parameters`` cannot be filled and is an error naming it.
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
def parameters_on_meta() -> Iterator[dict[str, Any]]:
    """Build modules with their parameters on the meta device; yields the random state at entry.

    Each parameter is moved to meta as it is registered, so no full-size weight is ever
    written to (the brief ``torch.empty`` of a layer's constructor touches no memory).
    """
    original = nn.Module.register_parameter
    captured = {"rng": torch.get_rng_state()}

    def register_on_meta(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield captured
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def has_meta_parameters(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def fill_shards(model: nn.Module, device: torch.device, rng_state: Optional[torch.Tensor]) -> None:
    """Allocate the local shards of a sharded meta model and initialise them module by module."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    meta_owners = [(name, m) for name, m in model.named_modules() if any(p.is_meta for p in m.parameters(recurse=False))]
    for name, module in meta_owners:
        if not callable(getattr(module, "reset_parameters", None)):
            raise UsageError(
                f"fsdp_config cpu_ram_efficient_loading: {name or 'the model'} ({type(module).__name__}) holds "
                "parameters but has no reset_parameters(), so its shards cannot be initialised after an empty "
                "build; give it a reset_parameters() method, or drop cpu_ram_efficient_loading"
            )
    model._apply(lambda t: torch.empty_like(t, device=device) if t.is_meta else t.to(device))
    with torch.random.fork_rng(devices=[]):
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        for _, module in meta_owners:
            sharded = dict(module.named_parameters(recurse=False))
            for pname, param in sharded.items():  # full-size stand-ins for this one module
                module._parameters[pname] = nn.Parameter(
                    torch.empty(param.shape, dtype=param.dtype, device=device), requires_grad=param.requires_grad
                )
            try:
                with torch.no_grad():
                    module.reset_parameters()
            finally:
                for pname, param in sharded.items():
                    full = module._parameters[pname].detach()
                    module._parameters[pname] = param
                    with torch.no_grad():
                        if isinstance(param, DTensor):
                            local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
                            param.to_local().copy_(local.to_local())
                        else:
                            param.copy_(full)
