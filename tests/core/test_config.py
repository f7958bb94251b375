"""Parsing the command line and config files into TrainingArguments, with provenance."""

import dataclasses
import json
from typing import Optional

import pytest

from treadle import hookimpl
from treadle.args import TrainingArguments
from treadle.config import TreadleArgumentParser, parse_arguments
from treadle.errors import UsageError
from treadle.plugins import TreadlePluginManager


@pytest.fixture
def pm():
    return TreadlePluginManager(autoload=False)


def parse(argv, pm, **kw):
    return parse_arguments(argv, pm, **kw)


def test_value_forms(pm):
    parsed = parse(["--learning-rate", "3e-4", "--per_device_train_batch_size=16", "--max_steps", "7"], pm)
    args = parsed.args
    assert args.learning_rate == 3e-4 and args.per_device_train_batch_size == 16 and args.max_steps == 7


@pytest.mark.parametrize(
    "argv, expected",
    [(["--disable_tqdm"], True), (["--disable_tqdm", "false"], False), (["--disable_tqdm=no"], False), (["--no_disable_tqdm"], False), (["--no-disable-tqdm"], False)],
)
def test_boolean_forms(pm, argv, expected):
    assert parse(argv + ["--max_steps", "1"], pm).args.disable_tqdm is expected


def test_lists_as_words_or_commas(pm):
    assert parse(["--report_to", "jsonl", "console"], pm).args.report_to == ["jsonl", "console"]
    assert parse(["--report_to=jsonl,console"], pm).args.report_to == ["jsonl", "console"]


def test_a_quoted_list_of_choices_is_its_words(pm):
    """The seeds write --fsdp "full_shard auto_wrap": one word with a space, each part a choice."""
    parsed = parse(["--fsdp", "full_shard auto_wrap"], pm, check_selections=False)  # no fsdp plugin here
    assert parsed.args.fsdp == ["full_shard", "auto_wrap"]
    with pytest.raises(UsageError, match="'auto_warp' is not one of"):
        parse(["--fsdp", "full_shard auto_warp"], pm, check_selections=False)


def test_negative_numbers_are_values(pm):
    assert parse(["--max_steps", "-1"], pm).args.max_steps == -1


def test_config_files_and_precedence(pm, tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("learning_rate: 1e-3\nper_device_train_batch_size: 4\nseed: 7\n")
    json_file = tmp_path / "more.json"
    json_file.write_text(json.dumps({"seed": 11, "max_steps": 3}))
    parsed = parse([str(yaml_file), "--config", str(json_file), "--per_device_train_batch_size", "32"], pm)
    args = parsed.args
    assert args.learning_rate == 1e-3  # YAML reads 1e-3 as text: converted by the field type
    assert args.seed == 11  # later file wins
    assert args.per_device_train_batch_size == 32  # command line wins
    assert parsed.sources["learning_rate"] == f"config file {yaml_file}"
    assert parsed.sources["seed"] == f"config file {json_file}"
    assert parsed.sources["per_device_train_batch_size"] == "command line"
    assert parsed.sources["adam_beta1"] == "default"


def test_task_defaults_apply_only_to_unset_values(pm):
    parsed = parse(["--learning_rate", "0.5"], pm)
    assert parsed.args.learning_rate == 0.5
    assert parsed.sources["learning_rate"] == "command line"
    assert parsed.sources["per_device_train_batch_size"] == "default of task 'demo'"


def test_implied_values_are_reported(pm):
    parsed = parse(["--eval_strategy", "steps", "--logging_steps", "25", "--task", "json:loads"], pm)
    assert parsed.args.eval_steps == 25
    assert parsed.sources["eval_steps"].startswith("implied")
    assert parsed.sources["do_eval"].startswith("implied")


def test_unknown_flag_suggests(pm):
    with pytest.raises(UsageError, match="unknown argument --learnig_rate; did you mean --learning_rate"):
        parse(["--learnig_rate", "1"], pm)


def test_unknown_key_in_file_suggests(pm, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("per_device_train_batch_sz: 3\n")
    with pytest.raises(UsageError, match="did you mean --per_device_train_batch_size"):
        parse([str(path)], pm)


def test_bad_value_type(pm):
    with pytest.raises(UsageError, match="--max_steps expects INT, got 'many'"):
        parse(["--max_steps", "many"], pm)


def test_bad_choice_suggests(pm):
    with pytest.raises(UsageError, match="did you mean 'steps'"):
        parse(["--eval_strategy", "step"], pm)


def test_broken_config_file(pm, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(UsageError, match="is not valid YAML"):
        parse([str(path)], pm)
    with pytest.raises(UsageError, match="does not exist"):
        parse([str(tmp_path / "missing.json")], pm)


def test_missing_value(pm):
    with pytest.raises(UsageError, match="--seed expects a value"):
        parse(["--seed"], pm)


def test_missing_plugins_are_reported_together(pm):
    with pytest.raises(UsageError) as err:
        parse(["--backend", "xla", "--report_to", "wandb", "--strategy", "fsdp"], pm)
    text = str(err.value)
    assert all(f"plugins/treadle-{name}" in text for name in ("xla", "wandb", "fsdp"))  # installed from the repository


def test_validation_messages_come_together(pm):
    with pytest.raises(UsageError) as err:
        parse(["--per_device_train_batch_size", "-1", "--warmup_ratio", "2"], pm)
    assert "per_device_train_batch_size" in str(err.value) and "warmup_ratio" in str(err.value)


def test_deprecated_alias_still_works(pm, capsys):
    parsed = parse(["--evaluation_strategy", "epoch", "--task", "json:loads"], pm)
    assert parsed.args.eval_strategy == "epoch"
    assert "eval_strategy" in capsys.readouterr().err


def test_plugin_fields_parse_and_read_back(pm):
    class Plugin:
        @hookimpl
        def treadle_add_arguments(self, schema):
            schema.add("acme_project", type=str, default="default-project", help="the project")
            schema.add("acme_retries", type=int, default=2)

        @hookimpl
        def treadle_validate_arguments(self, args):
            return ["--acme_retries must be positive"] if args.acme_retries < 1 else None

    pm.register_module(Plugin(), "acme")
    args = parse(["--acme_project", "x", "--acme-retries", "5"], pm).args
    assert args.acme_project == "x" and args.acme_retries == 5
    assert parse([], pm).args.acme_project == "default-project"
    with pytest.raises(UsageError, match="acme_retries must be positive"):
        parse(["--acme_retries", "0"], pm)


def test_python_parser_with_user_dataclass(pm, tmp_path):
    @dataclasses.dataclass
    class ModelArguments:
        model_name: str = dataclasses.field(default="tiny", metadata={"help": "which model"})
        hidden: int = 8
        dropout: Optional[float] = None

    parser = TreadleArgumentParser((ModelArguments, TrainingArguments), pm=pm)
    model_args, training_args = parser.parse_args_into_dataclasses(
        ["--hidden", "16", "--output_dir", str(tmp_path), "--learning_rate", "0.1"]
    )
    assert model_args.hidden == 16 and model_args.model_name == "tiny"
    assert training_args.learning_rate == 0.1 and training_args.output_dir == str(tmp_path)

    *_, remaining = parser.parse_args_into_dataclasses(["--hidden", "2", "--unknown_flag", "v"], return_remaining_strings=True)
    assert remaining == ["--unknown_flag", "v"]

    model_args, training_args = parser.parse_dict({"hidden": 3, "seed": 5})
    assert model_args.hidden == 3 and training_args.seed == 5
    with pytest.raises(UsageError, match="did you mean --hidden"):
        parser.parse_dict({"hiden": 3})

    path = tmp_path / "args.yaml"
    path.write_text("dropout: 0.25\nnum_train_epochs: 2\n")
    model_args, training_args = parser.parse_yaml_file(str(path))
    assert model_args.dropout == 0.25 and training_args.num_train_epochs == 2.0


def test_optimizer_and_schedule_names_come_from_the_registries(pm):
    with pytest.raises(UsageError, match="no installed plugin provides optimizer 'lion'"):
        parse(["--optim", "lion"], pm)
    with pytest.raises(UsageError, match="Did you mean 'cosine'"):
        parse(["--lr_scheduler_type", "cosin"], pm)

    class Plugin:
        @hookimpl
        def treadle_register_optimizers(self, register):
            register("lion", "mypkg.optim:lion")

    pm.register_module(Plugin(), "lionplug")
    assert parse(["--optim", "lion"], pm).args.optim == "lion"
