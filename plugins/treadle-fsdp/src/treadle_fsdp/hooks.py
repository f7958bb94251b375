"""treadle-fsdp's registration: the ``fsdp`` strategy, and the checks of ``--fsdp`` / ``fsdp_config``.

The option checks live in ``treadle_fsdp.options`` (standard library only), so a wrong key or
an option FSDP2 cannot honour is reported when the arguments are parsed, before torch loads.
The strategy itself (torch) is named by a string and imported only when selected.
"""

from __future__ import annotations

from typing import Any

from treadle import hookimpl


@hookimpl
def treadle_register_strategies(register: Any) -> None:
    register(
        "fsdp",
        "treadle_fsdp.nd_strategy:NdFsdpStrategy",  # FsdpStrategy, plus parallelism_config's N-D mesh (tp, cp)
        description="fully sharded data parallel on FSDP2 (fully_shard on a device mesh; tensor and context parallel with "
        "parallelism_config), sharded DCP checkpoints",
        aliases=("fsdp2",),
    )


@hookimpl
def treadle_validate_arguments(args: Any) -> list[str] | None:
    strategy = getattr(args.strategy, "value", args.strategy)
    if getattr(args, "parallelism_config", None) is not None and strategy in ("fsdp", "fsdp2", "auto", None):
        from treadle.parallelism import check_arguments, layout

        from treadle_fsdp.options import OFFERED, SP_HINT, handler_problems

        problems = check_arguments(args, OFFERED, "fsdp", SP_HINT)
        if problems:
            return problems
        problems = handler_problems(layout(args.load_json_field("parallelism_config")).extra)
        if problems:
            return problems
    if strategy not in ("fsdp", "fsdp2") and not args.fsdp:
        return None
    from treadle_fsdp.options import FsdpOptionError, settings

    try:
        settings(args.fsdp, args.load_json_field("fsdp_config"))  # a JSON file's path is read here
    except OSError as exc:
        return [f"fsdp_config: cannot read {args.fsdp_config}: {exc}"]
    except FsdpOptionError as exc:
        return exc.problems
    return None


@hookimpl
def treadle_extend_catalog(catalog: Any) -> None:
    """``parallelism_config`` (without a deepspeed config or ``--strategy deepspeed``, which has its own
    sequence parallelism) selects fsdp."""

    def _parallelism(args: Any) -> str | None:
        if getattr(args, "parallelism_config", None) is None or getattr(args, "deepspeed", None) is not None:
            return None
        if getattr(args.strategy, "value", args.strategy) == "deepspeed":  # it reads parallelism_config (sp_size) itself
            return None
        return "implied by parallelism_config"

    catalog.imply("strategy", "fsdp", _parallelism, field="parallelism_config", describe=lambda args: "parallelism_config")


@hookimpl
def treadle_report_env() -> list[tuple[str, str]] | None:
    import torch
    import torch.distributed as dist

    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        available = False
    else:
        available = dist.is_available()
    return [("FSDP2 (torch.distributed.fsdp.fully_shard)", f"torch {torch.__version__}" if available else "not available")]
