"""Which ``parallelism_config`` dimensions the deepspeed strategy builds, checked without torch.

DeepSpeed's engine shards over the data-parallel processes (ZeRO) and splits sequences with
ALST/Ulysses sequence parallelism; tensor and context parallel on a device mesh belong to the
fsdp strategy. The checks use ``treadle.parallelism`` (standard library only), so a wrong size
is reported when the arguments are parsed, before any process starts.
"""

from __future__ import annotations

from typing import Any

OFFERED = ("dp_shard_size", "sp_size")
"""The ``parallelism_config`` size keys the deepspeed strategy can build."""

OTHER_STRATEGY_HINT = (
    "tensor and context parallel run on torch's DeviceMesh with the fsdp strategy (--strategy fsdp, treadle-fsdp); "
    "with DeepSpeed use sp_size (ALST/Ulysses) to split long sequences"
)


def check_arguments(args: Any) -> list[str]:
    """Parse-time problems of ``parallelism_config`` under the deepspeed strategy (an empty list when fine)."""
    if getattr(args, "parallelism_config", None) is None:
        return []
    from treadle.parallelism import check_arguments as check

    problems = check(args, OFFERED, "deepspeed", OTHER_STRATEGY_HINT)
    try:
        backend = args.load_json_field("parallelism_config")
    except OSError:
        return problems
    backend = backend.get("sp_backend") if isinstance(backend, dict) else getattr(backend, "sp_backend", None)
    if backend not in (None, "deepspeed"):
        problems.append(
            f"parallelism_config: sp_backend={backend!r}; the deepspeed strategy splits sequences with DeepSpeed's "
            "ALST/Ulysses attention (sp_backend \"deepspeed\", or leave it out)"
        )
    return problems


__all__ = ["OFFERED", "OTHER_STRATEGY_HINT", "check_arguments"]
