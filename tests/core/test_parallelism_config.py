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


@dataclasses.dataclass
class ContextHandler:  # accelerate's TorchContextParallelConfig
    cp_comm_strategy: str = "alltoall"


@dataclasses.dataclass
class ParallelismConfig:  # accelerate's field names, and the defaults its __post_init__ fills in
    dp_replicate_size: int = 1
    dp_shard_size: int = 2
    tp_size: int = 1
    cp_size: int = 2
    cp_backend: str = "torch"
    cp_handler: object = dataclasses.field(default_factory=ContextHandler)
    sp_size: int = 1
    sp_backend: str = "deepspeed"
    sp_handler: object = None


def test_accelerates_config_object_is_read_by_its_fields():
    assert parallelism.as_dict(ParallelismConfig()) == {
        "dp_replicate_size": 1, "dp_shard_size": 2, "tp_size": 1, "cp_size": 2, "sp_size": 1,
        "cp_handler": {"cp_comm_strategy": "alltoall"}, "cp_backend": "torch", "sp_backend": "deepspeed",
    }
    result = parallelism.layout(ParallelismConfig(), world_size=4)
    assert result.shape() == (1, 2, 2, 1) and result.extra["cp_handler"] == {"cp_comm_strategy": "alltoall"}
    with pytest.raises(parallelism.ParallelismError, match="expected a JSON object"):
        parallelism.as_dict(42)


def test_the_arguments_hold_the_object_as_plain_json(tmp_path):
    """Checkpoints and reporters save the arguments as JSON: a handler object must not reach them."""
    import json

    from treadle import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", parallelism_config=ParallelismConfig())
    assert args.parallelism_config["cp_handler"] == {"cp_comm_strategy": "alltoall"}
    assert json.loads(json.dumps(args.to_dict()))["parallelism_config"] == args.parallelism_config


def test_another_context_parallel_backend_or_a_bad_handler_is_named():
    with pytest.raises(parallelism.ParallelismError, match="cp_backend='ring'"):
        parallelism.layout({"cp_size": 2, "cp_backend": "ring"})
    with pytest.raises(parallelism.ParallelismError, match="cp_handler must be a JSON object"):
        parallelism.layout({"cp_size": 2, "cp_handler": "alltoall"})


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
