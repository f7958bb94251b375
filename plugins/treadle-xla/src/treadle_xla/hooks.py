"""Registration of the XLA backend and its strategies; light (no torch, no torch_xla import).

``--backend auto`` considers XLA after cuda and mps, and only where ``PJRT_DEVICE`` is set or a
TPU is attached (``XlaBackend.is_available`` checks that without importing torch_xla). With
the xla backend the strategy defaults to ``xla`` (gradients reduced across the PJRT replicas);
``fsdp_config`` with ``"xla": true`` selects ``xla_fsdp`` (torch_xla's FSDP) instead.
"""

from __future__ import annotations

import os

from treadle import hookimpl

_REQUIRES = ("torch_xla",)


@hookimpl
def treadle_register_backends(register):
    register(
        "xla",
        "treadle_xla.backend:XlaBackend",
        description="XLA devices through torch_xla / PJRT (TPU; PJRT_DEVICE=CPU or CUDA)",
        aliases=("tpu",),
        requires=_REQUIRES,
        priority=10,
    )


@hookimpl
def treadle_register_strategies(register):
    register(
        "xla",
        "treadle_xla.strategy:XlaStrategy",
        description="one XLA device per process; gradients reduced across PJRT replicas",
        requires=_REQUIRES,
        compat={"backend": ("xla",)},
    )
    register(
        "xla_fsdp",
        "treadle_xla.strategy:XlaFsdpStrategy",
        description="torch_xla's fully sharded data parallel (fsdp_config with \"xla\": true)",
        requires=_REQUIRES,
        compat={"backend": ("xla",)},
    )


def _xla_selected(args) -> bool:
    backend = str(args.backend)
    return backend in ("xla", "tpu") or (backend == "auto" and bool(os.environ.get("PJRT_DEVICE")))


def _wants_xla_fsdp(args) -> bool:
    if not args.fsdp_config:
        return False
    try:
        config = args.load_json_field("fsdp_config")  # a dict, or the JSON file it names
    except (OSError, ValueError):
        return False  # the core reports an unreadable config
    return isinstance(config, dict) and bool(config.get("xla"))


@hookimpl
def treadle_adjust_arguments(args, explicit):
    derived = args.derived_fields()  # the core's own choice ('single' by default) is not the user's
    if ("strategy" in explicit and "strategy" not in derived) or not _xla_selected(args):
        return
    if args.strategy == "single":
        args.set_derived("strategy", "xla", f"implied by backend={args.backend!r}: one XLA device per process")
    elif args.strategy == "fsdp" and _wants_xla_fsdp(args):
        args.set_derived("strategy", "xla_fsdp", "implied by fsdp_config 'xla': true")


@hookimpl
def treadle_validate_arguments(args):
    if _wants_xla_fsdp(args) and str(args.backend) not in ("xla", "tpu", "auto"):
        return [f"fsdp_config: 'xla': true needs backend 'xla', but backend={args.backend!r}"]
    return None


@hookimpl
def treadle_report_env():
    from treadle_xla.backend import environment_lines

    return environment_lines()
