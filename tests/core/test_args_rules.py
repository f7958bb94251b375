"""Behaviour of TrainingArguments: validation rules, aliases, implications, helpers."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings

import pytest
from treadle.args import DEPRECATED_ALIASES, TrainingArguments, TrainingArgumentsError
from treadle.errors import UsageError


@pytest.fixture(autouse=True)
def _single_process_env(monkeypatch):
    """Launcher variables leak from CI runners; each test sets what it needs."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def problems(**kwargs) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            TrainingArguments(**kwargs)
        except TrainingArgumentsError as exc:
            return exc.messages
    return []


def assert_problem(fragment: str, **kwargs) -> None:
    found = problems(**kwargs)
    assert any(fragment in m for m in found), f"expected a problem mentioning {fragment!r}, got {found}"


# ------------------------------------------------------------------ the error type


def test_defaults_are_valid():
    args = TrainingArguments()
    assert args.validate() == []
    assert args.output_dir == "trainer_output"


def test_all_problems_are_reported_at_once():
    with pytest.raises(TrainingArgumentsError) as info:
        TrainingArguments(
            per_device_train_batch_size=-1, eval_strategy="sometimes", seed=-3, warmup_ratio=2.0, hub_strategy="never"
        )
    err = info.value
    assert isinstance(err, ValueError)
    assert len(err.messages) == 5
    assert str(err).splitlines() == err.messages
    for field in ("per_device_train_batch_size", "eval_strategy", "seed", "warmup_ratio", "hub_strategy"):
        assert any(m.startswith(field) for m in err.messages)


def test_validate_sees_later_mutation():
    args = TrainingArguments()
    args.gradient_accumulation_steps = 0
    args.eval_strategy = "sometimes"
    found = args.validate()
    assert any("gradient_accumulation_steps" in m for m in found)
    assert any("eval_strategy" in m for m in found)


# ------------------------------------------------------------------ coercion


def test_strings_from_config_files_are_coerced():
    args = TrainingArguments(learning_rate="5e-5", do_train="true", per_device_train_batch_size="16", run_name=7)
    assert args.learning_rate == 5e-5 and args.do_train is True
    assert args.per_device_train_batch_size == 16 and args.run_name == "7"


def test_bad_types_are_reported():
    found = problems(per_device_train_batch_size="many", do_train="maybe", learning_rate=True, num_train_epochs="inf")
    assert sorted(m.split(":")[0] for m in found) == [
        "do_train",
        "learning_rate",
        "num_train_epochs",
        "per_device_train_batch_size",
    ]
    assert any("per_device_train_batch_size: expected a whole number (got 'many')" == m for m in found)


# ------------------------------------------------------------------ step counts


@pytest.mark.parametrize("name", ["logging_steps", "save_steps", "eval_steps", "warmup_steps"])
def test_fraction_step_counts_stay_fractions(name):
    args = TrainingArguments(**{name: 0.25})
    assert getattr(args, name) == 0.25


@pytest.mark.parametrize("name", ["logging_steps", "save_steps", "eval_steps", "warmup_steps"])
def test_whole_float_step_counts_become_int(name):
    value = getattr(TrainingArguments(**{name: 200.0}), name)
    assert value == 200 and isinstance(value, int)


@pytest.mark.parametrize("name", ["logging_steps", "save_steps", "eval_steps", "warmup_steps"])
def test_non_whole_step_counts_above_one_are_rejected(name):
    assert_problem(f"{name}: must be a whole number", **{name: 2.5})


def test_eval_steps_defaults_to_logging_steps():
    args = TrainingArguments(eval_strategy="steps", logging_steps=50)
    assert args.eval_steps == 50
    assert args.derived_fields()["eval_steps"] == "defaults to logging_steps"
    assert TrainingArguments(eval_strategy="steps", logging_steps=50, eval_steps=20).eval_steps == 20


def test_eval_steps_needs_something_positive():
    assert_problem("eval_steps: eval_strategy='steps' needs", eval_strategy="steps", logging_steps=0, logging_strategy="no")


def test_logging_and_save_steps_must_be_positive_for_steps_strategy():
    assert_problem("logging_steps: logging_strategy='steps' needs", logging_steps=0)
    assert_problem("save_steps: save_strategy='steps' needs", save_steps=0)
    assert problems(save_steps=0, save_strategy="no", logging_steps=0, logging_strategy="epoch") == []


# ------------------------------------------------------------------ evaluation, best model


def test_do_eval_follows_eval_strategy():
    args = TrainingArguments(eval_strategy="epoch")
    assert args.do_eval is True
    assert args.derived_fields()["do_eval"] == "implied by eval_strategy='epoch'"
    assert TrainingArguments().do_eval is False
    assert TrainingArguments(do_eval=True).do_eval is True  # evaluate at the end only


def test_do_eval_false_contradicts_eval_strategy():
    assert_problem("do_eval: is False", do_eval=False, eval_strategy="steps")


def test_load_best_needs_matching_strategies():
    assert_problem(
        "save_strategy ('steps') must match eval_strategy ('epoch')", load_best_model_at_end=True, eval_strategy="epoch"
    )
    assert_problem("load_best_model_at_end: needs an eval_strategy", load_best_model_at_end=True)
    assert problems(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="epoch") == []
    assert problems(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="best") == []


def test_load_best_save_steps_multiple_of_eval_steps():
    common = dict(load_best_model_at_end=True, eval_strategy="steps", save_strategy="steps")
    assert_problem("round multiple of eval_steps", eval_steps=300, save_steps=500, **common)
    assert_problem("round multiple of eval_steps", eval_steps=500, save_steps=250, **common)
    assert problems(eval_steps=250, save_steps=500, **common) == []
    assert problems(eval_steps=0.1, save_steps=0.2, **common) == []
    assert_problem("both be fractions", eval_steps=0.1, save_steps=500, **common)


def test_metric_for_best_model_defaults_to_loss():
    args = TrainingArguments(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="epoch")
    assert args.metric_for_best_model == "loss"
    assert args.greater_is_better is False
    derived = args.derived_fields()
    assert derived["metric_for_best_model"] == "default for load_best_model_at_end=True"
    assert derived["greater_is_better"] == "follows metric_for_best_model='loss'"


@pytest.mark.parametrize(("metric", "greater"), [("accuracy", True), ("eval_loss", False), ("f1", True), ("nll_loss", False)])
def test_greater_is_better_follows_metric(metric, greater):
    args = TrainingArguments(metric_for_best_model=metric)
    assert args.greater_is_better is greater
    assert args.derived_fields()["greater_is_better"] == f"follows metric_for_best_model={metric!r}"
    assert TrainingArguments(metric_for_best_model=metric, greater_is_better=not greater).greater_is_better is (not greater)


def test_save_best_needs_a_metric_and_evaluation():
    found = problems(save_strategy="best")
    assert any("needs metric_for_best_model" in m for m in found)
    assert any("needs an eval_strategy" in m for m in found)
    assert problems(save_strategy="best", eval_strategy="epoch", metric_for_best_model="accuracy") == []


def test_reduce_on_plateau_needs_evaluation_and_gets_a_metric():
    assert_problem("reduce_lr_on_plateau", lr_scheduler_type="reduce_lr_on_plateau")
    args = TrainingArguments(lr_scheduler_type="reduce_lr_on_plateau", eval_strategy="epoch")
    assert args.metric_for_best_model == "loss"


# ------------------------------------------------------------------ names and choices


def test_optimizer_and_schedule_names_are_left_to_the_registries():
    """Plugins add optimizer and schedule names, so the schema accepts any name; the plugin
    manager rejects an unknown one when it resolves it (see test_config)."""
    for name in ("adamw_torch", "sgd", "lion_from_a_plugin", "mypkg.optim:Lion"):
        assert problems(optim=name) == []
    for name in ("linear", "cosine", "zigzag_from_a_plugin"):
        assert problems(lr_scheduler_type=name) == []
    assert_problem("optim: must be an optimizer name", optim="")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eval_strategy", "sometimes"),
        ("save_strategy", "always"),
        ("logging_strategy", "best"),
        ("hub_strategy", "never"),
        ("half_precision_backend", "magic"),
        ("log_level", "loud"),
        ("log_level_replica", "quiet"),
        ("ddp_backend", "carrier_pigeon"),
        ("nan_inf_policy", "ignore"),
        ("include_num_input_tokens_seen", "some"),
        ("debug", "everything"),
        ("include_for_metrics", "labels"),
        ("fsdp", "shard_everything"),
    ],
)
def test_closed_choices_are_enforced(field, value):
    assert_problem(f"{field}: {value!r} is not one of", **{field: value})


def test_enum_values_are_case_sensitive():
    assert_problem("eval_strategy: 'Steps' is not one of", eval_strategy="Steps")


@pytest.mark.parametrize("value", [True, "all", "true"])
def test_tokens_seen_accepts_booleans(value):
    assert TrainingArguments(include_num_input_tokens_seen=value).include_num_input_tokens_seen == "all"
    assert TrainingArguments(include_num_input_tokens_seen=False).include_num_input_tokens_seen == "no"


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("per_device_train_batch_size", 0),
        ("per_device_eval_batch_size", -8),
        ("gradient_accumulation_steps", 0),
        ("eval_accumulation_steps", 0),
        ("dataloader_num_workers", -1),
        ("learning_rate", -1e-3),
        ("adam_beta1", 1.0),
        ("adam_beta2", -0.1),
        ("label_smoothing_factor", 1.0),
        ("warmup_ratio", 1.5),
        ("warmup_steps", -3),
        ("save_total_limit", 0),
        ("ddp_timeout", 0),
        ("seed", -1),
        ("neftune_noise_alpha", 0.0),
        ("torch_empty_cache_steps", 0),
    ],
)
def test_bounds(field, value):
    assert_problem(f"{field}: must be", **{field: value})


def test_max_steps_and_epochs():
    assert_problem("max_steps: must be a positive number", max_steps=0)
    assert_problem("num_train_epochs: is 0", do_train=True, num_train_epochs=0)
    assert problems(do_train=True, num_train_epochs=0, max_steps=10) == []


def test_dataloader_worker_options_need_workers():
    assert_problem("dataloader_prefetch_factor", dataloader_prefetch_factor=2)
    assert_problem("dataloader_persistent_workers", dataloader_persistent_workers=True)
    assert problems(dataloader_num_workers=2, dataloader_prefetch_factor=2, dataloader_persistent_workers=True) == []


# ------------------------------------------------------------------ warmup


def test_get_warmup_steps():
    assert TrainingArguments().get_warmup_steps(1000) == 0
    assert TrainingArguments(warmup_steps=30).get_warmup_steps(1000) == 30
    assert TrainingArguments(warmup_steps=0.05).get_warmup_steps(1000) == 50
    assert TrainingArguments(warmup_steps=0.1).get_warmup_steps(95) == 10  # rounded up
    assert TrainingArguments(warmup_ratio=0.1).get_warmup_steps(95) == 10
    assert TrainingArguments(warmup_steps=7, warmup_ratio=0.5).get_warmup_steps(1000) == 7  # steps override ratio


# ------------------------------------------------------------------ report_to


@pytest.mark.parametrize(
    ("given", "expected"),
    [("none", []), ("all", ["all"]), ("wandb", ["wandb"]), ("wandb tensorboard", ["wandb", "tensorboard"]),
     ("wandb,tensorboard", ["wandb", "tensorboard"]), (["jsonl"], ["jsonl"]), ([], [])],
)  # fmt: skip
def test_report_to_is_normalised_to_a_list(given, expected):
    assert TrainingArguments(report_to=given).report_to == expected


def test_report_to_defaults_to_no_reporter():
    args = TrainingArguments()
    assert args.report_to == []
    assert "report_to" in args.derived_fields()


def test_report_to_all_and_none_are_exclusive():
    assert_problem("report_to: 'all' and 'none' cannot be combined", report_to="all wandb")
    assert_problem("report_to: 'all' and 'none' cannot be combined", report_to=["none", "tensorboard"])


# ------------------------------------------------------------------ implications and contradictions


def test_precision_from_flags():
    assert TrainingArguments(fp16=True).precision == "fp16"
    assert TrainingArguments(bf16=True).derived_fields()["precision"] == "implied by bf16=True"
    assert TrainingArguments().precision == "fp32"
    args = TrainingArguments(precision="bf16")
    assert args.bf16 is True and args.derived_fields()["bf16"] == "implied by precision='bf16'"
    assert TrainingArguments(precision="fp8").precision == "fp8"  # plugins add precisions


def test_precision_contradictions():
    assert_problem("fp16, bf16: choose one", fp16=True, bf16=True)
    assert_problem("precision: 'fp32' contradicts fp16=True", precision="fp32", fp16=True)
    assert_problem("precision: 'fp16' contradicts bf16=True", precision="fp16", bf16=True)
    assert_problem("fp16_full_eval, bf16_full_eval", fp16_full_eval=True, bf16_full_eval=True)


def test_backend_from_use_cpu():
    args = TrainingArguments(use_cpu=True)
    assert args.backend == "cpu" and args.derived_fields()["backend"] == "implied by use_cpu=True"
    assert TrainingArguments(backend="cpu").use_cpu is True
    assert TrainingArguments().backend == "auto"
    assert TrainingArguments(backend="xla").backend == "xla"  # open set: plugins add backends
    assert_problem("backend: 'cuda' contradicts use_cpu=True", backend="cuda", use_cpu=True)
    assert_problem("tf32: needs", tf32=True, use_cpu=True)


def test_strategy_from_fsdp_and_deepspeed():
    args = TrainingArguments(fsdp="full_shard auto_wrap")
    assert args.fsdp == ["full_shard", "auto_wrap"]
    assert args.strategy == "fsdp" and args.derived_fields()["strategy"] == "implied by fsdp='full_shard auto_wrap'"
    assert TrainingArguments(fsdp=True).fsdp == ["full_shard"]
    assert TrainingArguments(fsdp=False).fsdp == []
    assert TrainingArguments(deepspeed="ds_config.json").strategy == "deepspeed"
    assert TrainingArguments().strategy == "single"
    assert TrainingArguments(strategy="fsdp").strategy == "fsdp"


def test_strategy_from_launcher_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    args = TrainingArguments()
    assert args.strategy == "ddp"
    assert args.derived_fields()["strategy"] == "WORLD_SIZE=4 in the environment"
    assert args.world_size == 4 and args.parallel_mode == "distributed"


def test_strategy_contradictions():
    assert_problem("strategy: 'ddp' contradicts fsdp", strategy="ddp", fsdp="full_shard")
    assert_problem("strategy: 'fsdp' contradicts the deepspeed config", strategy="fsdp", deepspeed={"train_batch_size": 8})
    assert_problem("fsdp, deepspeed: choose one", fsdp="full_shard", deepspeed="ds.json")


def test_fsdp_option_rules():
    assert_problem("fsdp: 'offload' works only together", fsdp="offload")
    assert_problem("alternative sharding modes", fsdp="full_shard shard_grad_op")
    assert problems(fsdp="full_shard offload auto_wrap") == []
    assert_problem("xla_fsdp_grad_ckpt needs xla", fsdp="full_shard", fsdp_config={"xla_fsdp_grad_ckpt": True})


def test_fsdp_config_accepts_v4_prefixed_keys():
    args = TrainingArguments(fsdp="full_shard", fsdp_config={"fsdp_min_num_params": 1000, "xla": False})
    assert args.fsdp_config == {"min_num_params": 1000, "xla": False}


def test_sharded_ddp_is_refused_with_a_hint():
    assert_problem("sharded_ddp: FairScale sharded DDP is not supported; use fsdp", sharded_ddp="simple")
    assert problems(sharded_ddp=False) == [] and problems(sharded_ddp="") == []


def test_torch_compile_implied():
    args = TrainingArguments(torch_compile_backend="inductor")
    assert args.torch_compile is True
    assert args.derived_fields()["torch_compile"] == "implied by torch_compile_backend='inductor'"
    assert TrainingArguments(torch_compile_mode="reduce-overhead").torch_compile is True


def test_disable_tqdm_follows_log_level():
    assert TrainingArguments().disable_tqdm is False
    assert TrainingArguments(log_level="error").disable_tqdm is True
    assert TrainingArguments(log_level="error", disable_tqdm=False).disable_tqdm is False


def test_derived_fields_only_lists_derived_values():
    args = TrainingArguments(bf16=True, eval_strategy="steps", metric_for_best_model="accuracy", strategy="single")
    derived = args.derived_fields()
    assert derived["precision"] == "implied by bf16=True"
    assert derived["do_eval"] == "implied by eval_strategy='steps'"
    assert derived["eval_steps"] == "defaults to logging_steps"
    assert derived["greater_is_better"] == "follows metric_for_best_model='accuracy'"
    assert "strategy" not in derived and "bf16" not in derived
    derived["precision"] = "tampered"
    assert args.derived_fields()["precision"] == "implied by bf16=True"  # a copy


# ------------------------------------------------------------------ JSON fields


def test_json_fields_accept_text_dicts_and_paths(tmp_path):
    args = TrainingArguments(lr_scheduler_kwargs='{"num_cycles": 2}', deepspeed={"zero_optimization": {"stage": 2}})
    assert args.lr_scheduler_kwargs == {"num_cycles": 2}
    assert args.deepspeed == {"zero_optimization": {"stage": 2}}
    path = tmp_path / "fsdp.json"
    path.write_text(json.dumps({"min_num_params": 10}))
    args = TrainingArguments(fsdp="full_shard", fsdp_config=str(path))
    assert args.fsdp_config == str(path)
    assert args.load_json_field("fsdp_config") == {"min_num_params": 10}


def test_json_fields_report_bad_json():
    assert_problem("lr_scheduler_kwargs: not valid JSON", lr_scheduler_kwargs="{num_cycles: 2}")


# ------------------------------------------------------------------ deprecated aliases


ALIAS_CASES = [
    ("evaluation_strategy", "epoch", "eval_strategy", "epoch"),
    ("per_gpu_train_batch_size", 4, "per_device_train_batch_size", 4),
    ("per_gpu_eval_batch_size", 2, "per_device_eval_batch_size", 2),
    ("no_cuda", True, "use_cpu", True),
    ("fp16_backend", "cpu_amp", "half_precision_backend", "cpu_amp"),
    ("push_to_hub_token", "hf_secret", "hub_token", "hf_secret"),
    ("push_to_hub_model_id", "mymodel", "hub_model_id", "mymodel"),
    ("xpu_backend", "ccl", "ddp_backend", "ccl"),
    ("torchdynamo", "inductor", "torch_compile_backend", "inductor"),
    ("use_mps_device", True, "backend", "mps"),
    ("tpu_num_cores", 8, "backend", "xla"),
    ("include_inputs_for_metrics", True, "include_for_metrics", ["inputs"]),
    ("tpu_metrics_debug", True, "debug", ["tpu_metrics_debug"]),
    ("adafactor", True, "optim", "adafactor"),
    ("fsdp_min_num_params", 100, "fsdp_config", {"min_num_params": 100}),
    ("fsdp_transformer_layer_cls_to_wrap", "BertLayer,GPTJBlock", "fsdp_config", {"transformer_layer_cls_to_wrap": ["BertLayer", "GPTJBlock"]}),
    ("dispatch_batches", False, "accelerator_config", {"dispatch_batches": False}),
]  # fmt: skip


@pytest.mark.parametrize(("old", "value", "new", "expected"), ALIAS_CASES)
def test_alias_moves_value_with_future_warning(old, value, new, expected):
    assert DEPRECATED_ALIASES[old] == new
    with pytest.warns(FutureWarning, match=old):
        args = TrainingArguments(**{old: value})
    assert getattr(args, new) == expected
    assert getattr(args, old) is None
    assert old not in args.to_dict()


def test_every_alias_is_covered_by_a_test():
    covered = {case[0] for case in ALIAS_CASES} | {"push_to_hub_organization"}
    assert covered == set(DEPRECATED_ALIASES)


def test_push_to_hub_organization_prefixes_the_repo():
    with pytest.warns(FutureWarning):
        args = TrainingArguments(output_dir="runs/exp1", push_to_hub_organization="acme")
    assert args.hub_model_id == "acme/exp1"
    with pytest.warns(FutureWarning):
        args = TrainingArguments(push_to_hub_organization="acme", push_to_hub_model_id="bert")
    assert args.hub_model_id == "acme/bert"


def test_alias_and_new_name_disagreeing_is_an_error():
    assert_problem(
        "evaluation_strategy: deprecated alias of eval_strategy, but both are given",
        evaluation_strategy="steps",
        eval_strategy="epoch",
    )
    assert_problem("use_mps_device", use_mps_device=True, backend="cuda")
    with pytest.warns(FutureWarning):
        assert TrainingArguments(evaluation_strategy="epoch", eval_strategy="epoch").eval_strategy == "epoch"


def test_no_warning_without_aliases():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainingArguments(eval_strategy="epoch", use_cpu=True)


def test_alias_values_survive_set_helpers():
    with pytest.warns(FutureWarning):
        args = TrainingArguments(use_mps_device=True, evaluation_strategy="epoch")
    args.set_training(learning_rate=1e-3)
    assert args.backend == "mps" and args.eval_strategy == "epoch"


def test_alias_implications_follow_through():
    with pytest.warns(FutureWarning):
        args = TrainingArguments(no_cuda=True)
    assert args.backend == "cpu"


# ------------------------------------------------------------------ secrets


SECRETS = dict(
    hub_token="hf_abc123", plugin_options={"wandb_api_key": "k-999", "mlflow_password": "pw-1", "wandb_project": "demo"}
)


def test_tokens_masked_in_to_dict():
    d = TrainingArguments(**SECRETS).to_dict()
    assert d["hub_token"] == "***"
    assert d["plugin_options"] == {"wandb_api_key": "***", "mlflow_password": "***", "wandb_project": "demo"}


def test_tokens_masked_everywhere():
    args = TrainingArguments(**SECRETS)
    for text in (args.to_json_string(), repr(args), str(args), json.dumps(args.to_sanitized_dict())):
        for secret in ("hf_abc123", "k-999", "pw-1"):
            assert secret not in text
    assert args.hub_token == "hf_abc123"  # the value itself is intact
    assert args.wandb_api_key == "k-999"


def test_alias_token_is_masked_too():
    with pytest.warns(FutureWarning):
        args = TrainingArguments(push_to_hub_token="hf_old")
    assert "hf_old" not in repr(args) and args.hub_token == "hf_old"


def test_unset_token_stays_visible_as_none():
    assert TrainingArguments().to_dict()["hub_token"] is None


# ------------------------------------------------------------------ serialisation


def test_to_dict_round_trips():
    args = TrainingArguments(bf16=True, eval_strategy="steps", report_to="jsonl", fsdp="full_shard")
    again = TrainingArguments(**args.to_dict())
    assert again.to_dict() == args.to_dict()
    assert json.loads(args.to_json_string()) == args.to_dict()


def test_to_sanitized_dict_is_flat_scalars():
    args = TrainingArguments(fsdp="full_shard", plugin_options={"wandb_project": "demo"})
    flat = args.to_sanitized_dict()
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["fsdp"] == "['full_shard']" and flat["run_name"] == "None"
    assert flat["wandb_project"] == "demo" and "plugin_options" not in flat
    assert flat["train_batch_size"] == 8


def test_pickle_and_replace_keep_derivations_straight():
    args = TrainingArguments(fp16=True)
    clone = pickle.loads(pickle.dumps(args))
    assert clone == args and clone.derived_fields() == args.derived_fields()
    other = args.replace(fp16=False)
    assert other.precision == "fp32" and other.fp16 is False
    assert args.precision == "fp16"


# ------------------------------------------------------------------ plugin options


def test_plugin_options_read_and_write_as_attributes():
    args = TrainingArguments(plugin_options={"wandb_project": "demo"})
    assert args.wandb_project == "demo"
    args.wandb_project = "other"
    assert args.plugin_options["wandb_project"] == "other"
    with pytest.raises(AttributeError, match="wandb_entity"):
        _ = args.wandb_entity


def test_plugin_options_cannot_shadow_core_fields():
    assert_problem("plugin_options: 'seed' is a core field", plugin_options={"seed": 1})


# ------------------------------------------------------------------ set_* helpers


def test_set_training():
    args = TrainingArguments().set_training(learning_rate=1e-4, batch_size=32)
    assert args.learning_rate == 1e-4 and args.per_device_train_batch_size == 32 and args.do_train


def test_set_evaluate_and_rederivation():
    args = TrainingArguments()
    assert args.set_evaluate(strategy="steps", steps=100) is args
    assert args.eval_steps == 100 and args.do_eval is True
    args.set_evaluate(strategy="no")
    assert args.do_eval is False


def test_set_logging_rederives_eval_steps():
    args = TrainingArguments(eval_strategy="steps")
    assert args.eval_steps == 500
    args.set_logging(strategy="steps", steps=100)
    assert args.logging_steps == 100 and args.eval_steps == 100


def test_set_save_and_testing():
    args = TrainingArguments().set_save(strategy="steps", steps=100, total_limit=2)
    assert (args.save_steps, args.save_total_limit) == (100, 2)
    args.set_testing(batch_size=32)
    assert args.per_device_eval_batch_size == 32 and args.do_predict


def test_set_optimizer_scheduler_dataloader():
    args = TrainingArguments()
    assert args.set_optimizer(name="adamw_torch", beta1=0.8).adam_beta1 == 0.8
    assert args.set_lr_scheduler(name="cosine", warmup_steps=0.05).warmup_steps == 0.05
    args.set_dataloader(train_batch_size=16, eval_batch_size=64, sampler_seed=7)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size, args.data_seed) == (16, 64, 7)


def test_set_push_to_hub():
    args = TrainingArguments().set_push_to_hub("me/awesome-model", token="hf_x")
    assert args.push_to_hub and args.hub_model_id == "me/awesome-model"
    assert "hf_x" not in repr(args)


def test_set_helper_revalidates_and_rolls_back():
    args = TrainingArguments()
    with pytest.raises(TrainingArgumentsError, match="save_strategy: 'best' needs"):
        args.set_save(strategy="best")
    assert args.save_strategy == "steps"
    assert args.validate() == []


def test_set_helper_precision_rederives():
    args = TrainingArguments(fp16=True)
    args.fp16 = False
    args.bf16 = True
    args.set_training()  # re-derives from the new flags instead of keeping the stale 'fp16'
    assert args.precision == "bf16"


# ------------------------------------------------------------------ processes


def test_process_properties_from_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    args = TrainingArguments(strategy="ddp")
    assert (args.world_size, args.process_index, args.local_process_index) == (8, 5, 1)
    assert args.should_log is False and args.should_save is False
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert args.should_log is True  # log_on_each_node defaults to True
    assert args.should_save is False  # save_on_each_node defaults to False


def test_single_process_defaults():
    args = TrainingArguments(use_cpu=True)
    assert (args.world_size, args.process_index, args.local_process_index) == (1, 0, 0)
    assert args.should_log and args.should_save
    assert args.parallel_mode == "not_parallel"
    assert args.n_gpu == 0 and args.train_batch_size == 8 and args.eval_batch_size == 8


def test_process_log_level(monkeypatch):
    assert TrainingArguments(log_level="info").get_process_log_level() == 20
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    assert TrainingArguments(log_level="info").get_process_log_level() == 30  # replica default: warning
    assert TrainingArguments(log_level_replica="error").get_process_log_level() == 40


def test_main_process_first_is_a_no_op_without_distributed():
    ran = []
    with TrainingArguments().main_process_first(desc="tokenize"):
        ran.append(True)
    assert ran == [True]


class FakeDistributed:
    """Stands in for torch.distributed: records the order of barrier calls."""

    def __init__(self, log):
        self.log = log

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def barrier(self):
        self.log.append("barrier")


@pytest.mark.parametrize(("rank", "expected"), [("0", ["work", "barrier"]), ("1", ["barrier", "work"])])
def test_main_process_first_orders_replicas_after_main(monkeypatch, rank, expected):
    log: list[str] = []
    monkeypatch.setitem(sys.modules, "torch.distributed", FakeDistributed(log))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", rank)
    with TrainingArguments(strategy="ddp").main_process_first(desc="tokenize"):
        log.append("work")
    assert log == expected


def test_backend_plugins_can_set_device_and_gpu_count():
    args = TrainingArguments(backend="xla")
    with pytest.raises(UsageError, match="pip install .*plugins/treadle-xla"):  # the device comes from the backend plugin
        _ = args.device
    args.device = "xla:0"
    args.n_gpu = 2
    assert args.device == "xla:0" and args.n_gpu == 2
    assert args.train_batch_size == 16


def test_device_on_cpu():
    assert str(TrainingArguments(use_cpu=True).device) == "cpu"


# ------------------------------------------------------------------ import rule


def test_importing_args_does_not_import_torch():
    code = (
        "import sys, treadle.args as a\n"
        "args = a.TrainingArguments(fp16=True, eval_strategy='steps', report_to='all')\n"
        "args.to_dict(); args.to_json_string(); args.to_sanitized_dict(); repr(args)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
