"""``CudaBackend``: train on an NVIDIA GPU, one device per process.

The device of a process is ``cuda:<LOCAL_RANK>`` (0 without a launcher), counted among the
devices ``CUDA_VISIBLE_DEVICES`` leaves visible, as torch counts them. Process groups default to
nccl (``distributed_backend``); batches come from pinned host memory and are copied without
blocking; ``--tf32`` sets TF32 for matrix products and cuDNN convolutions (Ampere or newer);
the CUDA generator of the device goes into checkpoints; ``memory_stats`` feeds the
``*_mem_gpu_*`` metrics and ``empty_cache`` serves ``--torch_empty_cache_steps``.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from treadle.components import Backend
from treadle.errors import UsageError


def _visible() -> str:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "unset" if value is None else repr(value)


class CudaBackend(Backend):
    """One CUDA device per process."""

    name = "cuda"
    n_gpu = 1
    distributed_backend = "nccl"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.device: Optional[torch.device] = None

    @classmethod
    def unavailable_reason(cls) -> Optional[str]:
        if torch.version.cuda is None:
            return f"this torch ({torch.__version__}) is built without CUDA"
        try:
            count = torch.cuda.device_count()
            if count and torch.cuda.is_available():
                return None
        except Exception as exc:  # a broken driver: say so, never raise from here
            return f"CUDA is not usable: {type(exc).__name__}: {exc}"
        return f"no CUDA device visible (CUDA_VISIBLE_DEVICES {_visible()})"

    @classmethod
    def is_available(cls) -> bool:
        return cls.unavailable_reason() is None

    @classmethod
    def device_count(cls) -> int:
        return torch.cuda.device_count() if cls.is_available() else 0

    def setup_device(self, local_rank: int) -> torch.device:
        if self.device is not None:
            return self.device
        reason = self.unavailable_reason()
        if reason:
            raise UsageError(f"--backend cuda: {reason}. Use --backend cpu (or auto) on this machine")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise UsageError(
                f"--backend cuda: this process has LOCAL_RANK {local_rank} but only {count} CUDA device(s) are visible "
                f"(CUDA_VISIBLE_DEVICES {_visible()}); start at most {count} process(es) per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        if self.args.tf32 is not None:
            set_tf32(bool(self.args.tf32), device)
        self.device = device
        return device

    def pin_memory(self) -> bool:
        return True

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def memory_stats(self) -> dict[str, int]:
        return {"allocated": torch.cuda.memory_allocated(self.device), "peak": torch.cuda.max_memory_allocated(self.device)}

    def reset_peak_memory_stats(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def rng_state(self) -> dict[str, torch.Tensor]:
        return {"cuda": torch.cuda.get_rng_state(self.device)}

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"].cpu(), self.device)


def set_tf32(enabled: bool, device: torch.device) -> None:
    """TF32 on (or off) for matmuls and cuDNN; on needs compute capability 8.0 (Ampere) or newer."""
    if enabled and torch.cuda.get_device_capability(device) < (8, 0):
        name = torch.cuda.get_device_name(device)
        raise UsageError(f"--tf32: {name} has compute capability {torch.cuda.get_device_capability(device)}; "
                         "TF32 needs 8.0 (Ampere) or newer. Drop --tf32")
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch 2.9+: the precision setting replaces allow_tf32
        precision = "tf32" if enabled else "ieee"
        matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_enabled() -> bool:
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return matmul.fp32_precision == "tf32"
    return bool(matmul.allow_tf32)


def environment_lines() -> list[tuple[str, str]]:
    """``treadle env``: CUDA and driver versions, the visible GPUs, nccl and cuDNN."""
    lines = [("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")),
             ("torch cuda build", str(torch.version.cuda))]
    reason = CudaBackend.unavailable_reason()
    if reason:
        lines.append(("gpus", f"none: {reason}"))
        return lines
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        lines.append((f"gpu {index}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, "
                                      f"compute capability {props.major}.{props.minor}"))
    if torch.distributed.is_available() and torch.distributed.is_nccl_available():
        version = torch.cuda.nccl.version()
        lines.append(("nccl", ".".join(map(str, version)) if isinstance(version, tuple) else str(version)))
    lines.append(("cudnn", str(torch.backends.cudnn.version())))
    return lines
