"""``XlaBackend``: train on an XLA device (TPU, or PJRT's CPU / CUDA clients) through torch_xla.

XLA is lazy: operations on XLA tensors are recorded into a graph that runs only when the
program asks for a value or marks a step. The loop calls ``step_end`` after every optimizer
step and every evaluation batch, and that is where the graph is cut (``torch_xla.sync``), so
each training step compiles once and then replays. Dataloaders are wrapped in torch_xla's
``MpDeviceLoader``, which copies the next batches to the device in a background thread.

The device RNG is XLA's own running seed (``torch.manual_seed`` does not reach it): the run
seeds it from ``--seed`` (``manual_seed``) and it goes into checkpoints, so dropout resumes
exactly. ``setup_device`` has no other effect, so ``TrainingArguments.device`` may call it.

``--debug tpu_metrics_debug`` prints torch_xla's metrics report (compilations, transfers,
execution times) when training ends.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
from typing import Any, Optional

import torch

from treadle.components import Backend
from treadle.markers import hookimpl

logger = logging.getLogger("treadle.xla")

_UINT64 = 1 << 64


def tpu_attached() -> bool:
    """Whether this host shows a TPU (the accel device nodes TPU VMs have, or the TPU env vars)."""
    if os.environ.get("TPU_NAME") or os.environ.get("TPU_ACCELERATOR_TYPE"):
        return True
    return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


class XlaBackend(Backend):
    """One XLA device per process (PJRT gives each process its local device)."""

    name = "xla"
    parallel_mode = "tpu"
    n_gpu = 0

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.device: Optional[torch.device] = None

    # availability (cheap: no torch_xla import) ---------------------------------------------------
    @classmethod
    def unavailable_reason(cls) -> Optional[str]:
        try:
            installed = importlib.util.find_spec("torch_xla") is not None
        except (ImportError, ValueError):
            installed = False
        if not installed:
            return "torch_xla is not installed (pip install torch-xla matching your torch)"
        if os.environ.get("PJRT_DEVICE") or tpu_attached():
            return None
        return "no TPU found and PJRT_DEVICE is not set (PJRT_DEVICE=CPU or CUDA to use XLA there)"

    @classmethod
    def is_available(cls) -> bool:
        return cls.unavailable_reason() is None

    @classmethod
    def device_count(cls) -> int:
        if not cls.is_available():
            return 0
        import torch_xla.runtime as xr

        return xr.addressable_device_count()

    # device ----------------------------------------------------------------------------------------
    def setup_device(self, local_rank: int) -> torch.device:
        if self.device is None:
            import torch_xla

            self.device = torch_xla.device()
        return self.device

    def manual_seed(self, seed: int) -> None:
        """XLA's generator is its own (``torch.manual_seed`` leaves it): seed it so dropout repeats."""
        import torch_xla.core.xla_model as xm

        xm.set_rng_state(int(seed), device=self.device)

    def move_batch(self, batch: Any, device: torch.device) -> Any:
        from treadle.model_io import move_to_device

        return move_to_device(batch, device)  # a no-op for tensors the parallel loader already placed

    def process_dataloader(self, dataloader: Any) -> Any:
        from torch_xla.distributed.parallel_loader import MpDeviceLoader

        return MpDeviceLoader(dataloader, self.device or self.setup_device(0))

    def step_end(self) -> None:
        _sync()

    def synchronize(self) -> None:
        import torch_xla.core.xla_model as xm

        _sync()
        xm.wait_device_ops()

    # RNG -----------------------------------------------------------------------------------------
    def rng_state(self) -> dict[str, torch.Tensor]:
        import torch_xla.core.xla_model as xm

        seed = int(xm.get_rng_state(device=self.device))  # a uint64; safetensors keeps int64
        return {"xla_seed": torch.tensor(seed - _UINT64 if seed >= 1 << 63 else seed, dtype=torch.int64)}

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        import torch_xla.core.xla_model as xm

        if "xla_seed" in state:
            xm.set_rng_state(int(state["xla_seed"]) % _UINT64, device=self.device)

    # end of training -----------------------------------------------------------------------------
    @hookimpl
    def treadle_on_train_end(self, args: Any, state: Any) -> None:
        if "tpu_metrics_debug" in (args.debug or []) and state.is_world_process_zero:
            logger.info("torch_xla metrics at the end of training:\n%s", metrics_report())


def _sync() -> None:
    from treadle_xla.graph import cut

    cut()


def metrics_report() -> str:
    import torch_xla.debug.metrics as met

    return met.metrics_report()


def environment_lines() -> list[tuple[str, str]]:
    """``treadle env`` lines: torch_xla's version and the PJRT device (only when it can load)."""
    lines = [("PJRT_DEVICE", os.environ.get("PJRT_DEVICE", "(unset)")), ("TPU attached", str(tpu_attached()))]
    reason = XlaBackend.unavailable_reason()
    if reason and "not installed" in reason:
        lines.append(("torch_xla", "not installed"))
        return lines
    try:
        import torch_xla

        lines.append(("torch_xla", torch_xla.__version__))
        if reason is None:
            import torch_xla.runtime as xr

            device = f"{torch_xla.device()} ({xr.device_type()}), {xr.addressable_device_count()} addressable"
            lines.append(("xla device", device))
    except Exception as exc:  # a torch_xla built for another torch fails to import
        lines.append(("torch_xla", f"not importable: {type(exc).__name__}: {exc}"))
    return lines
