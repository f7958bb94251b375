"""``treadle.parallelism``: reading ``parallelism_config`` (shared by every strategy that builds meshes)."""

from __future__ import annotations

import dataclasses

import pytest
from treadle import parallelism


def test_impossible_sizes_are_each_named():
    with pytest.raises(parallelism.ParallelismError) as info:
        parallelism.layout({"cp_size": 2, "tp_size": 0, "pp_size": 2, "tp_plan": ["q"]})
    message = str(info.value)
    assert "tp_size must be a whole number" in message and "'pp_size'" in message and "tp_plan must map" in message


def test_dp_shard_is_what_the_other_sizes_leave():
    layout = parallelism.layout({"tp_size": 2, "cp_size": 2}, world_size=8)
    assert (layout.dp_shard, layout.dp_size, layout.shape()) == (2, 2, (1, 2, 2, 2))
    assert [layout.dp_rank(rank) for rank in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]  # a tp x cp block shares a batch
    assert parallelism.layout({"dp_shard_size": -1, "sp_size": 4}, world_size=8).sizes() == {
        "dp_replicate_size": 1, "dp_shard_size": 2, "tp_size": 1, "cp_size": 1, "sp_size": 4,
    }


def test_a_world_size_the_sizes_do_not_divide_is_named():
    with pytest.raises(parallelism.ParallelismError, match=r"6 processes cannot be split into .*tp_size=4"):
        parallelism.layout({"tp_size": 4}, world_size=6)
    with pytest.raises(parallelism.ParallelismError, match=r"= 8, but the run has 4 processes"):
        parallelism.layout({"dp_shard_size": 2, "tp_size": 4}, world_size=4)


def test_a_strategy_names_the_dimensions_it_cannot_build():
    layout = parallelism.layout({"tp_size": 2, "sp_size": 2})
    problems = parallelism.unsupported(layout, ("dp_shard_size", "sp_size"), "demo", "use another strategy")
    assert problems == [
        "parallelism_config: tp_size=2 is not something the demo strategy can build "
        "(it offers dp_shard_size, sp_size); use another strategy"
    ]
    assert parallelism.unsupported(None, (), "demo") == []


def test_accelerates_config_object_is_read_by_its_fields():
    @dataclasses.dataclass
    class ParallelismConfig:  # accelerate's field names
        dp_replicate_size: int = 1
        dp_shard_size: int = 2
        tp_size: int = 1
        cp_size: int = 2
        cp_handler: object = None

    assert parallelism.as_dict(ParallelismConfig()) == {"dp_replicate_size": 1, "dp_shard_size": 2, "tp_size": 1, "cp_size": 2}
    with pytest.raises(parallelism.ParallelismError, match="expected a JSON object"):
        parallelism.as_dict(42)


def test_a_strategys_constructor_gets_one_usage_error_naming_every_problem(tmp_path):
    from treadle import TrainingArguments
    from treadle.errors import UsageError

    args = TrainingArguments(str(tmp_path), report_to="none", use_cpu=True, strategy="single",
                             parallelism_config={"tp_size": 2, "sp_size": 2})
    with pytest.raises(UsageError, match=r"tp_size=2 is not something the demo strategy can build") as info:
        parallelism.strategy_layout(args, ("dp_shard_size", "sp_size"), "demo")
    assert "sp_size" not in str(info.value).split("(it offers")[0]
    assert parallelism.strategy_layout(TrainingArguments(str(tmp_path), report_to="none"), (), "demo") is None
    with pytest.raises(UsageError, match="the world size must be a multiple of 2"):
        parallelism.resolved(parallelism.layout({"sp_size": 2}), 3)
    assert parallelism.resolved(parallelism.layout({"sp_size": 2}), 4).dp_shard == 2
