"""The cpu backend's thread count: usable cores per process less one, never above torch's, OMP_NUM_THREADS wins."""

from __future__ import annotations

import os

import pytest
import torch
from treadle.args import TrainingArguments
from treadle.trainer import Trainer

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")


@pytest.fixture
def threads(monkeypatch, tmp_path):
    """``run(cores, torch_threads)``: the torch thread count after building a cpu Trainer on that many cores."""
    affinity, before = os.sched_getaffinity(0), torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)

    def run(cores: int, torch_threads: int) -> int:
        os.sched_setaffinity(0, set(sorted(affinity)[:cores]))
        torch.set_num_threads(torch_threads)
        Trainer(torch.nn.Linear(2, 2), TrainingArguments(str(tmp_path), report_to="none", backend="cpu"))
        return torch.get_num_threads()

    yield run
    os.sched_setaffinity(0, affinity)
    torch.set_num_threads(before)


def test_one_core_less_than_the_process_may_use(threads):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 usable cores")
    assert threads(cores=1, torch_threads=4) == 1
    assert threads(cores=2, torch_threads=4) == 1  # the other core is the loop's and the loaders'


def test_processes_on_the_node_share_the_cores(threads, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cores = len(os.sched_getaffinity(0))
    assert threads(cores=cores, torch_threads=64) == max(1, cores // 2 - 1)


def test_never_raised_and_omp_num_threads_wins(threads, monkeypatch):
    assert threads(cores=1, torch_threads=1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads(cores=1, torch_threads=3) == 3


def test_treadle_env_says_what_the_cpu_backend_uses(capsys, monkeypatch):
    from treadle.cli import main

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert main(["env"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "cpu backend threads" in line)
    assert "per process" in line and "OMP_NUM_THREADS overrides" in line
