"""Can this device do what a precision asks? Answered once, at start, by trying it.

Support differs by device family and model (bfloat16 on older GPUs, float16 on TPUs, GradScaler
on a new backend), and torch's own answer is sometimes only a warning after which autocast is
quietly off. So each check runs the real operation on a tiny tensor on the run's device and
turns any failure, or a result in the wrong dtype, into a ``UsageError`` that names the
combination: a run never goes on in float32 believing it is in half precision.
"""

from __future__ import annotations

import warnings

import torch

from treadle.errors import UsageError

HALF_PRECISION_BACKENDS = {"cuda_amp": "cuda", "cpu_amp": "cpu"}
"""``--half_precision_backend`` values that name one device family; ``auto`` follows the run."""


def check_half_precision_backend(backend: str, device: torch.device, precision: str) -> None:
    """``--half_precision_backend cuda_amp`` on a CPU run (and the like) is a contradiction."""
    if backend == "apex":
        raise UsageError("--half_precision_backend apex: NVIDIA apex is not supported; treadle-amp uses torch.amp (auto)")
    wanted = HALF_PRECISION_BACKENDS.get(backend)
    if wanted is not None and wanted != device.type:
        raise UsageError(
            f"--half_precision_backend {backend} asks for {wanted} autocast, but this run trains on {device} "
            f"(precision {precision}); use --half_precision_backend auto, or select a {wanted} backend"
        )


def check_autocast(device: torch.device, dtype: torch.dtype, precision: str) -> None:
    """A matmul under ``torch.autocast(device.type, dtype)`` must compute in ``dtype``."""
    if not torch.amp.is_autocast_available(device.type):
        raise UsageError(f"precision {precision}: torch has no autocast for {device.type} devices, so {device} cannot run it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns and disables autocast for an unsupported dtype
            with torch.autocast(device.type, dtype=dtype):
                probe = torch.ones(2, 2, device=device)
                result = probe @ probe
    except Exception as exc:  # the device refuses the dtype outright
        raise UsageError(f"precision {precision}: {device} cannot compute in {_label(dtype)} ({exc})") from None
    if result.dtype != dtype:
        raise UsageError(
            f"precision {precision}: autocast on {device} does not compute in {_label(dtype)} (it ran in "
            f"{_label(result.dtype)}); choose a precision this device supports, e.g. "
            f"{'bf16' if dtype == torch.float16 else 'fp16'} or fp32"
        )


def check_grad_scaler(device: torch.device, precision: str) -> None:
    """One scaled backward, unscale and step on a throwaway parameter, with a throwaway scaler."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scaler = torch.amp.GradScaler(device.type)
            if not scaler.is_enabled():
                raise RuntimeError("torch.amp.GradScaler is disabled on this device")
            weight = torch.zeros(1, device=device, requires_grad=True)
            optimizer = torch.optim.SGD([weight], lr=0.0)
            scaler.scale((weight * 1.0).sum()).backward()
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
    except Exception as exc:
        raise UsageError(
            f"precision {precision} needs a loss scaler (torch.amp.GradScaler), which does not work on {device}: {exc}. "
            "Use bf16 (no scaler needed) or fp32"
        ) from None


def _label(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def autocast_summary() -> str:
    """For ``treadle env``: the dtypes autocast computes in on each device family present."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    parts = []
    for kind in devices:
        works = []
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            try:
                check_autocast(torch.device(kind), dtype, name)
                works.append(name)
            except UsageError:
                pass
        parts.append(f"{kind}: {', '.join(works) or 'none'}")
    return "; ".join(parts)
