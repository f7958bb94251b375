"""Memory each stage of a run used, for ``--skip_memory_metrics false`` (the ``*_mem_*_delta`` metrics).

As transformers reports them: for each stage (``init``: building the Trainer, ``train``, ``eval``,
``test``: predict) the change of memory from the stage's start to its end (``alloc_delta``, may be
negative) and how far above the start it went at most (``peaked_delta``); for the CPU (the
process's resident memory) and, where the backend reports it (``Backend.memory_stats``), for the
device (``gpu``, the name transformers uses for any accelerator). A stage that runs inside another
(an evaluation during training) is not measured on its own: its memory belongs to the outer one.
The ``init`` figures are added to the first training's metrics, as transformers does.

No psutil: the resident size is read from ``/proc/self/statm``; the peak is ``VmHWM`` of
``/proc/self/status``, reset when a stage starts by writing ``5`` to ``/proc/self/clear_refs``
(Linux). Where that is impossible the peak is ``getrusage``'s ``ru_maxrss``, the peak of the whole
process: a stage's CPU ``peaked_delta`` is then 0 unless the stage went above every earlier peak.
Measuring costs two ``gc.collect()`` per stage, which is why it is off by default.
"""

from __future__ import annotations

import gc
import os
import re
import resource
import sys
from typing import Any, Optional

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> Optional[int]:
    """The process's resident memory now, or None where /proc is not there."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def peak_resident_bytes() -> int:
    """The most resident memory since the last ``reset_peak_resident`` (else since the process started)."""
    try:
        with open("/proc/self/status") as fh:
            match = re.search(r"^VmHWM:\s+(\d+)\s+kB", fh.read(), re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def reset_peak_resident() -> bool:
    """Make the current resident size the new peak (Linux); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class MemoryTracker:
    """``start(stage)`` / ``stop(stage, metrics)`` around each stage of a run."""

    def __init__(self, backend: Any, enabled: bool) -> None:
        self.backend = backend
        self.enabled = enabled
        self.stage: Optional[str] = None
        self.results: dict[str, dict[str, int]] = {}
        self._start: dict[str, Any] = {}
        self._init_reported = False

    def start(self, stage: str) -> None:
        if not self.enabled or self.stage is not None:
            return
        self.stage = stage
        gc.collect()
        self.backend.reset_peak_memory_stats()
        reset = reset_peak_resident()
        self._start = {
            "cpu": resident_bytes(),
            "cpu_peak": None if reset else peak_resident_bytes(),  # without a reset: only a new record counts
            "gpu": self.backend.memory_stats().get("allocated"),
        }

    def stop(self, stage: str, metrics: dict[str, Any]) -> None:
        """End ``stage`` and add ``<stage>_mem_*`` to ``metrics`` (at the first training, ``init_mem_*`` too).

        Nothing happens for a stage that was not the one started (it ran inside another).
        """
        if not self.enabled or self.stage != stage:
            return
        gc.collect()
        figures: dict[str, int] = {}
        start_cpu, now_cpu = self._start["cpu"], resident_bytes()
        if start_cpu is not None and now_cpu is not None:
            floor = start_cpu if self._start["cpu_peak"] is None else max(start_cpu, self._start["cpu_peak"])
            figures["cpu_alloc_delta"] = now_cpu - start_cpu
            figures["cpu_peaked_delta"] = max(0, peak_resident_bytes() - floor)
        stats = self.backend.memory_stats()
        if self._start["gpu"] is not None and "allocated" in stats:
            figures["gpu_alloc_delta"] = stats["allocated"] - self._start["gpu"]
            figures["gpu_peaked_delta"] = max(0, stats.get("peak", stats["allocated"]) - self._start["gpu"])
        self.results[stage] = figures
        self.stage = None
        stages = [stage]
        if stage == "train" and not self._init_reported and "init" in self.results:
            stages.insert(0, "init")
            self._init_reported = True
        for name in stages:
            for key, value in self.results[name].items():
                metrics[f"{name}_mem_{key}"] = value

    def forget(self, stage: str) -> None:
        """Close ``stage`` without figures (it ended in an error)."""
        if self.stage == stage:
            self.stage = None
