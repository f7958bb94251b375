"""Cutting XLA's lazy graph so that replicas which are threads of one process agree.

PJRT's CPU client runs N replicas as N threads of one process (``CPU_NUM_DEVICES=N`` under
``torch_xla.launch``). XLA:CPU's in-process collectives pair the replicas' halves of a
collective by an id the collective gets when its graph is compiled, and four things break
that pairing (each seen as a hang that XLA ends after 10 s: "Expected 2 threads to join the
rendezvous, but only 1 of them arrived"):

- two threads compiling the same graph at once number it differently: compilations are
  serialised by a process-wide lock (``cut``), so the second finds the first's executable;
- the ids depend on the rest of the graph, and the replicas' pending work differs (replica 0
  alone logs, a host read materialises part of one replica's work): on XLA:CPU a collective
  gets a graph of its own (``collective`` cuts before and after it), over device data;
- waiting for a running collective inside the lock (torch_xla frees its input buffers and
  the all-reduce token at the end of a sync, and freeing such a buffer waits for the
  collective, holding the GIL) deadlocks the replicas: collectives are out of place, their
  inputs outlive them, the token is dropped before the cut, and each replica waits for its
  collective outside the lock;
- a replica-dependent constant (the pinned all-gather pads by the ordinal) changes the graph.

A collective's result is cut right away, so the host reads that follow (``.item()``,
``.cpu()``) copy data and compile nothing. On TPUs, where torch_xla's collectives are used as
torch_xla uses them, only the lock and the cut after each collective remain (the lock is
uncontended with one replica per process).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_COMPILE_LOCK = threading.Lock()


def cut() -> None:
    """Compile and dispatch this replica's pending graph (one compilation at a time per process)."""
    import torch_xla

    if not isolates_collectives() or not hasattr(torch_xla._XLAC, "_set_all_reduce_token"):
        with _COMPILE_LOCK:
            _sync()
        return
    import torch_xla.core.xla_model as xm

    # torch_xla.sync in another order: it drops the device's all-reduce token after the step,
    # and dropping one that a dispatched collective still writes waits for the other replicas
    # while holding the lock. Dropped before, it is only pending work, and compiles out.
    device = torch_xla._XLAC._xla_get_default_device()
    torch_xla._XLAC._set_all_reduce_token(device, None)
    with _COMPILE_LOCK:
        torch_xla._XLAC._xla_step_marker(device, [], wait=False)
    xm._run_step_closures()


def collective(make: Callable[[], Any]) -> Any:
    """``make()`` (which records a collective), cut right after: reading the result on the host
    then copies data and compiles nothing.

    On XLA's CPU client the collective also gets a graph of its own, and the replica waits for
    it to finish. A buffer a running collective reads cannot be freed until the collective
    ends, and freeing blocks the thread (holding Python's GIL, inside the cut, under the
    lock) until the other replicas join, which they then cannot. So ``make`` must be out of
    place (no in-place list all-reduce) and its inputs must stay referenced until this returns.
    """
    if not isolates_collectives():
        value = make()
        cut()
        return value
    cut()
    value = make()
    cut()
    _wait_for_this_device()
    return value


def _sync() -> None:
    import torch_xla

    sync = getattr(torch_xla, "sync", None)
    if sync is not None:
        sync()
    else:  # torch_xla before 2.6
        import torch_xla.core.xla_model as xm

        xm.mark_step()


def _wait_for_this_device() -> None:
    """Wait (without the GIL, outside the lock) until this replica's dispatched work is done."""
    import torch_xla
    import torch_xla.core.xla_model as xm

    torch_xla._XLAC._xla_wait_device_ops(devices=xm.xla_real_devices([str(torch_xla.device())]))


def isolates_collectives() -> bool:
    """Whether collectives get graphs of their own and are waited for (XLA's CPU client)."""
    import torch_xla.runtime as xr

    return xr.device_type() == "CPU"
