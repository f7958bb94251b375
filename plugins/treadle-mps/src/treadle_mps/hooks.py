"""Registration of the MPS backend; light (no torch import).

Priority between cuda and xla: ``--backend auto`` on a Mac with Apple silicon takes it.
MPS runs in one process only (torch.distributed has no backend for it), which the validation
hook says before anything starts.
"""

from __future__ import annotations

import os

from treadle import hookimpl


@hookimpl
def treadle_register_backends(register):
    register("mps", "treadle_mps.backend:MpsBackend", description="Apple-silicon GPUs (Metal Performance Shaders)",
             priority=20)


@hookimpl
def treadle_validate_arguments(args):
    if str(args.backend) != "mps":
        return None
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world > 1:
        return [f"backend: 'mps' runs in one process only (torch.distributed has no MPS backend), but WORLD_SIZE={world}"]
    return None


@hookimpl
def treadle_report_env():
    from treadle_mps.backend import environment_lines

    return environment_lines()
