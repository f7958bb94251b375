"""Start a benchmark script again in 2 processes under torchrun's engine (``--worker`` mode).

Shared by the multi-process benchmarks (``bench_ddp.py``, ...): one torch thread per rank, a
free port on localhost, and only the named plugins loaded through their entry points
(``bench_overhead`` turns autoloading off for itself, so it is turned back on here).
"""

from __future__ import annotations

import os
import subprocess
import sys


def run_on_two_ranks(script: str, worker_argv: list[str], plugins: str) -> int:
    """Exit status of ``script --worker <worker_argv>`` run by 2 ranks with ``TREADLE_PLUGINS=plugins``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, "--worker",
               *worker_argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TREADLE_DISABLE_PLUGIN_AUTOLOAD": "0", "TREADLE_PLUGINS": plugins}
    return subprocess.run(command, env=env).returncode
