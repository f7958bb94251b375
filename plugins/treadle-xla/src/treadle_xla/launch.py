"""``python -m treadle_xla.launch <command> [ARGS]``: run a treadle command on every XLA replica.

``treadle train --nproc_per_node N`` starts N processes with torchrun, which is not how PJRT
makes replicas: torch_xla's own launcher (``torch_xla.launch``) starts one process per TPU chip
(threads for the cores of a v2/v3 chip), and on PJRT's CPU client one process with one thread
per device (``CPU_NUM_DEVICES=N``). This module hands the treadle command line to it; each
replica runs ``treadle <command> ...`` as the ``treadle`` console script would, and the xla
strategy finds the replicas through PJRT.

The exit status is 0 when every replica's command succeeded, else a failing replica's (2 for
a usage error, as with ``treadle``); a replica that fails while the
others wait in a collective ends the whole run (XLA aborts the process after its rendezvous
timeout), so checkpoints written before are what a resume starts from.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

USAGE = """usage: python -m treadle_xla.launch <treadle command> [ARGS ...]

Runs `treadle <command> ARGS` on every replica torch_xla's launcher starts: one per TPU chip,
or with PJRT_DEVICE=CPU one per device of CPU_NUM_DEVICES (threads of one process). Example:

    PJRT_DEVICE=CPU CPU_NUM_DEVICES=2 python -m treadle_xla.launch train --task demo --backend xla --max_steps 50
"""


class ReplicaFailed(RuntimeError):
    """A replica's treadle command returned a non-zero exit status (``status``)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # crosses from the replicas' process to the launching one
        return (type(self), (str(self), self.status))


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if words else 2
    try:
        launch([words])
    except ReplicaFailed as exc:
        print(f"treadle-xla: {exc}", file=sys.stderr)
        return exc.status
    except UsageProblem as exc:
        print(f"treadle-xla: {exc}", file=sys.stderr)
        return 2
    return 0


class UsageProblem(ValueError):
    """The launch cannot start as asked (said in one line)."""


def launch(commands: Sequence[Sequence[str]]) -> None:
    """Run each treadle command line of ``commands``, one after the other, on every replica.

    Several commands share one start-up (interpreter, torch_xla, compiled graphs): a run and
    its resume, say. Must be called before this process touches an XLA device.
    """
    if not os.environ.get("PJRT_DEVICE"):
        from treadle_xla.backend import tpu_attached

        if not tpu_attached():
            raise UsageProblem("no TPU found and PJRT_DEVICE is not set: set PJRT_DEVICE=CPU (and CPU_NUM_DEVICES=N)")
    import torch_xla

    if torch_xla._XLAC._xla_runtime_is_initialized():
        raise UsageProblem("this process already uses an XLA device; launch the replicas from a fresh process")
    torch_xla.launch(run_replica, args=([list(c) for c in commands],))


def run_replica(index: int, commands: Sequence[Sequence[str]]) -> None:
    """One replica: the treadle commands in turn, as the console script runs them."""
    from treadle.cli import main as treadle_main

    for argv in commands:
        status = treadle_main(list(argv))
        if status:
            raise ReplicaFailed(f"replica {index}: `treadle {' '.join(argv[:1])} ...` exited with status {status}", status)


if __name__ == "__main__":
    sys.exit(main())
