"""``treadle.distributed.ProcessGroupStrategy``: the group it joins is its own to destroy, however often it is set up.

A strategy may join its group early (``model_init_context``: DeepSpeed's ZeRO-3 partitions
parameters as they are created) and is set up again by the Trainer; the group must still be
destroyed at teardown, and a group the caller started must not be.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist

from treadle import TrainingArguments
from treadle.builtin.cpu import CpuBackend
from treadle.distributed import ProcessGroupStrategy


class OneProcessGroup(ProcessGroupStrategy):
    name = "one-process-group"

    def setup_model(self, model):
        return model


@pytest.fixture
def strategy(tmp_path, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    if dist.is_initialized():  # a Trainer of an earlier test keeps its group until its run ends (atexit)
        dist.destroy_process_group()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    made = OneProcessGroup(args, CpuBackend(args), None)
    yield made
    if dist.is_initialized():
        dist.destroy_process_group()


def test_a_group_it_started_is_destroyed_after_a_second_setup(strategy):
    strategy.setup_environment()
    strategy.setup_environment()  # the Trainer sets the strategy up after model_init_context did
    assert dist.is_initialized() and strategy.world_size == 1
    strategy.teardown()
    assert not dist.is_initialized()


def test_a_callers_group_is_left_to_the_caller(strategy):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    strategy.setup_environment()
    strategy.setup_environment()
    strategy.teardown()
    assert dist.is_initialized()
