"""The DeepSpeed config against treadle's arguments: "auto" filled, contradictions named, no torch needed."""

from __future__ import annotations

import json

import pytest

from treadle.args import TrainingArguments
from treadle.errors import UsageError
from treadle_deepspeed.config import adopt_config_values, engine_config, read_config


def args(**overrides):
    return TrainingArguments(output_dir="out", **overrides)


def fill(config, arguments=None, *, world_size=2, precision="fp32", hidden_size=None, steps=100, client=True):
    return engine_config(
        config, arguments or args(), world_size=world_size, precision=precision, hidden_size=hidden_size,
        num_training_steps=steps, client_optimizer=client,
    )


def test_the_config_is_read_from_a_dict_a_json_string_or_a_file(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 3}}')
    given = {"zero_optimization": {"stage": 3}}
    assert read_config(given) == read_config(json.dumps(given)) == read_config(str(path)) == given
    assert read_config(given) is not given  # filling "auto" never edits the caller's dict


@pytest.mark.parametrize(
    "value, words",
    [("missing.json", ["missing.json", "cannot read"]), ("{not json", ["not valid JSON"]), ("[1, 2]", ["JSON object"])],
)
def test_an_unreadable_config_is_one_message(tmp_path, value, words):
    if value == "[1, 2]":
        (tmp_path / "list.json").write_text(value)
        value = str(tmp_path / "list.json")
    with pytest.raises(UsageError) as error:
        read_config(value)
    assert all(word in str(error.value) for word in words)


def test_auto_values_come_from_the_arguments():
    config = {
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "warmup_min_lr": "auto", "warmup_max_lr": "auto", "warmup_num_steps": "auto", "total_num_steps": "auto"}},
        "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                              "stage3_param_persistence_threshold": "auto"},
    }
    arguments = args(per_device_train_batch_size=4, gradient_accumulation_steps=3, max_grad_norm=0.5, learning_rate=2e-4,
                     adam_beta1=0.8, adam_beta2=0.9, adam_epsilon=1e-6, weight_decay=0.01, warmup_ratio=0.1)
    filled = fill(config, arguments, precision="bf16", hidden_size=64, steps=200, client=False)
    assert filled["train_micro_batch_size_per_gpu"] == 4 and filled["gradient_accumulation_steps"] == 3
    assert filled["train_batch_size"] == 4 * 3 * 2
    assert filled["gradient_clipping"] == 0.5
    assert filled["optimizer"]["params"] == {"lr": 2e-4, "betas": [0.8, 0.9], "eps": 1e-6, "weight_decay": 0.01}
    assert filled["scheduler"]["params"] == {"warmup_min_lr": 0.0, "warmup_max_lr": 2e-4, "warmup_num_steps": 20,
                                             "total_num_steps": 200}
    assert filled["bf16"] == {"enabled": True} and filled["fp16"] == {"enabled": False}
    zero = filled["zero_optimization"]
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"], zero["stage3_param_persistence_threshold"]) == (
        4096, 3686, 640)
    assert "zero_allow_untested_optimizer" not in filled  # DeepSpeed builds this optimizer itself


def test_a_silent_config_gets_the_batch_layout_and_a_client_optimizer_is_allowed():
    filled = fill({}, args(per_device_train_batch_size=8, max_grad_norm=0.0), world_size=1)
    layout = (filled["train_micro_batch_size_per_gpu"], filled["gradient_accumulation_steps"], filled["train_batch_size"])
    assert layout == (8, 1, 8)
    assert filled["gradient_clipping"] == 0.0
    assert filled["zero_allow_untested_optimizer"] is True
    bucket = fill({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}})
    assert "reduce_bucket_size" not in bucket["zero_optimization"]  # no hidden size: DeepSpeed's default


@pytest.mark.parametrize(
    "config, arguments, words",
    [
        ({"train_micro_batch_size_per_gpu": 4}, {"per_device_train_batch_size": 8},
         ["train_micro_batch_size_per_gpu is 4", "--per_device_train_batch_size is 8"]),
        ({"gradient_clipping": 0.3}, {}, ["gradient_clipping is 0.3", "--max_grad_norm is 1.0"]),
        ({"train_batch_size": 10}, {"per_device_train_batch_size": 4}, ["train_batch_size is 10", "is 8"]),
        ({"optimizer": {"type": "AdamW", "params": {"lr": 0.1}}}, {}, ["optimizer.params.lr is 0.1", "--learning_rate"]),
        ({"optimizer": {"type": "AdamW", "params": {"betas": [0.5, 0.999]}}}, {}, ["optimizer.params.betas", "--adam_beta1"]),
    ],
)
def test_a_number_that_contradicts_an_argument_names_the_key(config, arguments, words):
    with pytest.raises(UsageError) as error:
        fill(config, args(**arguments), client="optimizer" not in config)
    assert all(word in str(error.value) for word in words), str(error.value)


@pytest.mark.parametrize(
    "config, precision, key",
    [({"fp16": {"enabled": True}}, "bf16", "fp16.enabled"), ({"bf16": {"enabled": False}}, "bf16", "bf16.enabled")],
)
def test_the_precision_must_agree(config, precision, key):
    with pytest.raises(UsageError, match=key):
        fill(config, precision=precision)
    assert fill({"bf16": {"enabled": True}}, precision="fp32")["bf16"] == {"enabled": True}  # the engine's own bf16


def test_an_auto_nothing_fills_is_named_and_two_optimizers_are_refused():
    with pytest.raises(UsageError, match="zero_optimization.sub_group_size"):
        fill({"zero_optimization": {"stage": 3, "sub_group_size": "auto"}})
    with pytest.raises(UsageError, match="optimizer section"):
        fill({"optimizer": {"type": "AdamW", "params": {}}}, client=True)


def test_at_parse_time_unset_arguments_adopt_the_config_and_set_ones_are_checked():
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 0.25, "optimizer": {"params": {"lr": "auto"}}}
    arguments = args()
    assert adopt_config_values(arguments, frozenset(), config) == []
    assert (arguments.per_device_train_batch_size, arguments.max_grad_norm) == (4, 0.25)
    problems = adopt_config_values(args(per_device_train_batch_size=8), frozenset({"per_device_train_batch_size"}), config)
    assert len(problems) == 1 and "train_micro_batch_size_per_gpu is 4" in problems[0]
    assert arguments.derived_fields()["per_device_train_batch_size"] == (
        "implied by train_micro_batch_size_per_gpu in the deepspeed config"  # a dict: no file to name
    )


def test_treadle_args_names_the_config_key_an_argument_came_from(tmp_path, capsys, only_plugins):
    from treadle.cli import main

    only_plugins("deepspeed")
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
                                "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "weight_decay": "auto"}}}))
    assert main(["args", "--task", "mypkg.tasks:build", "--deepspeed", str(path), "--changed", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["per_device_train_batch_size"] == {
        "value": 4, "source": f"implied by train_micro_batch_size_per_gpu in the deepspeed config {path}"}
    assert shown["gradient_accumulation_steps"]["source"] == f"implied by gradient_accumulation_steps in the deepspeed config {path}"
    assert shown["learning_rate"] == {"value": 3e-4, "source": f"implied by optimizer.params.lr in the deepspeed config {path}"}
    assert "weight_decay" not in shown  # "auto": the argument's default fills the config, nothing adopted
