"""Plugins' argument hooks and the selection checks run on every path to a run, once."""

from __future__ import annotations

import pytest
import torch

from treadle import hookimpl
from treadle.args import TrainingArguments
from treadle.config import TreadleArgumentParser, parse_arguments
from treadle.errors import UsageError
from treadle.plugins import TreadlePluginManager, get_plugin_manager, reset_plugin_manager
from treadle.trainer import Trainer


class AcmePlugin:
    """Adds ``--acme_retries`` (validated), and lowers ``logging_steps`` unless the user set it."""

    def __init__(self) -> None:
        self.adjust_calls = 0

    @hookimpl
    def treadle_add_arguments(self, schema):
        schema.add("acme_retries", type=int, default=2, help="retries")

    @hookimpl
    def treadle_adjust_arguments(self, args, explicit):
        self.adjust_calls += 1
        if "logging_steps" not in explicit:
            args.logging_steps = 3

    @hookimpl
    def treadle_validate_arguments(self, args):
        return ["--acme_retries must be positive"] if args.acme_retries < 1 else None


@pytest.fixture
def acme():
    plugin = AcmePlugin()
    pm = TreadlePluginManager(autoload=False)
    pm.register_module(plugin, "acme")
    previous = get_plugin_manager()
    reset_plugin_manager(pm)
    yield plugin
    reset_plugin_manager(previous)


def test_python_parser_runs_plugin_validation(acme):
    parser = TreadleArgumentParser(TrainingArguments)
    with pytest.raises(UsageError, match="acme_retries must be positive"):
        parser.parse_args_into_dataclasses(["--acme_retries", "0"])
    with pytest.raises(UsageError, match="acme_retries must be positive"):
        parser.parse_dict({"acme_retries": 0})


def test_python_parser_runs_adjust_with_the_given_names_as_explicit(acme):
    parser = TreadleArgumentParser(TrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(["--max_steps", "2"])
    assert args.logging_steps == 3
    (args,) = parser.parse_args_into_dataclasses(["--logging_steps", "7"])
    assert args.logging_steps == 7


def test_python_parser_checks_selections(acme):
    with pytest.raises(UsageError, match="pip install .*plugins/treadle-xla"):
        TreadleArgumentParser(TrainingArguments).parse_args_into_dataclasses(["--backend", "xla"])


def test_trainer_checks_python_arguments_in_one_error(acme, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), backend="xla", plugin_options={"acme_retries": 0})
    with pytest.raises(UsageError) as err:
        Trainer(torch.nn.Linear(2, 2), args=args)
    message = str(err.value)
    assert "acme_retries must be positive" in message and "plugins/treadle-xla" in message


def test_trainer_runs_adjust_hooks_for_python_arguments(acme, tmp_path):
    trainer = Trainer(torch.nn.Linear(2, 2), args=TrainingArguments(output_dir=str(tmp_path)))
    assert trainer.args.logging_steps == 3 and acme.adjust_calls == 1
    kept = Trainer(torch.nn.Linear(2, 2), args=TrainingArguments(output_dir=str(tmp_path), logging_steps=9))
    assert kept.args.logging_steps == 9


def test_arguments_are_checked_once(acme, tmp_path):
    args = parse_arguments(["--output_dir", str(tmp_path)]).args
    (again,) = TreadleArgumentParser(TrainingArguments).parse_args_into_dataclasses(["--output_dir", str(tmp_path)])
    assert acme.adjust_calls == 2
    Trainer(torch.nn.Linear(2, 2), args=args)
    Trainer(torch.nn.Linear(2, 2), args=again)
    assert acme.adjust_calls == 2


def test_selected_component_with_missing_requirement_is_a_parse_error():
    pm = TreadlePluginManager(autoload=False)
    assert pm.resolve("optimizer", "adamw_bnb_8bit").missing_requirements() == ["bitsandbytes"]
    with pytest.raises(UsageError) as err:
        parse_arguments(["--optim", "adamw_bnb_8bit"], pm)
    message = str(err.value)
    assert "--optim adamw_bnb_8bit" in message and "bitsandbytes" in message and "pip install bitsandbytes" in message


def test_missing_strategy_message_says_strategies():
    message = TreadlePluginManager(autoload=False).missing_message("strategy", "fsdp")
    assert "installed strategies: single" in message and "strategys" not in message
