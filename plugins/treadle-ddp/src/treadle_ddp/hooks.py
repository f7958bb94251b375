"""treadle-ddp's registration: the ``ddp`` strategy, named by a string so nothing heavy loads.

The core already implies ``--strategy ddp`` when a launcher started several processes
(``WORLD_SIZE > 1``); this module only says where the implementation lives and checks the
``ddp_*`` arguments that need no torch to be judged.
"""

from __future__ import annotations

from typing import Any

from treadle import hookimpl

_TORCH_BACKENDS = ("gloo", "nccl", "mpi", "ucc", "xccl", "hccl", "cncl", "mccl")


@hookimpl
def treadle_register_strategies(register: Any) -> None:
    register(
        "ddp",
        "treadle_ddp.strategy:DDPStrategy",
        description="DistributedDataParallel: one model replica per process, gradients averaged",
        aliases=("distributed_data_parallel",),
    )


@hookimpl
def treadle_validate_arguments(args: Any) -> list[str] | None:
    strategy = getattr(args.strategy, "value", args.strategy)
    if strategy not in ("ddp", "distributed_data_parallel"):
        return None
    problems = []
    if args.ddp_timeout is not None and args.ddp_timeout <= 0:
        problems.append(f"--ddp_timeout {args.ddp_timeout}: give the collective timeout in seconds (> 0)")
    if args.ddp_bucket_cap_mb is not None and args.ddp_bucket_cap_mb <= 0:
        problems.append(f"--ddp_bucket_cap_mb {args.ddp_bucket_cap_mb}: a bucket needs a size in MiB (> 0)")
    return problems or None


@hookimpl
def treadle_report_env() -> list[tuple[str, str]] | None:
    import torch.distributed as dist

    if not dist.is_available():
        return [("torch.distributed", "not available in this torch build")]
    backends = [name for name in _TORCH_BACKENDS if dist.is_backend_available(name)]
    return [("torch.distributed backends", ", ".join(backends) or "none")]
