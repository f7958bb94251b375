"""Registration of the CUDA backend; light (no torch import: ``treadle --help`` stays fast).

Highest priority of the device backends: ``--backend auto`` takes a visible GPU first.
"""

from __future__ import annotations

from treadle import hookimpl


@hookimpl
def treadle_register_backends(register):
    register(
        "cuda",
        "treadle_cuda.backend:CudaBackend",
        description="NVIDIA GPUs through CUDA: one device per process (LOCAL_RANK), nccl between processes",
        aliases=("gpu",),
        priority=30,
    )


@hookimpl
def treadle_validate_arguments(args):
    if args.tf32 and str(args.backend) not in ("cuda", "gpu", "auto", "cpu"):  # the core words the cpu case
        return [f"tf32: TF32 is a mode of CUDA GPUs (Ampere or newer), but backend={args.backend!r}"]
    return None


@hookimpl
def treadle_report_env():
    from treadle_cuda.backend import environment_lines

    return environment_lines()
