"""Arguments as a script ported from transformers' Trainer passes them (transformers 5 as the reference)."""

from __future__ import annotations

import warnings

import pytest
from treadle import hookimpl
from treadle.args import TrainingArguments
from treadle.cli import main
from treadle.config import TreadleArgumentParser, parse_arguments
from treadle.errors import UsageError
from treadle.plugins import TreadlePluginManager, get_plugin_manager, reset_plugin_manager


def test_output_dir_none_is_the_v5_default():
    assert TrainingArguments(output_dir=None).output_dir == "trainer_output"
    assert TrainingArguments().output_dir == "trainer_output"


def test_a_value_given_under_a_deprecated_name_beats_the_task_default():
    # the demo task's default eval_strategy is 'epoch'; the user's 'steps' (old name) wins, without a conflict
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        parsed = parse_arguments(["--evaluation_strategy", "steps", "--eval_steps", "5"], TreadlePluginManager(autoload=False))
    assert parsed.args.eval_strategy == "steps" and parsed.args.eval_steps == 5
    assert parsed.sources["eval_strategy"] == "command line (as --evaluation_strategy)"


def test_two_explicit_values_under_both_names_still_conflict(capsys):
    assert main(["args", "--evaluation_strategy", "steps", "--eval_strategy", "epoch", "--eval_steps", "5"]) == 2
    assert "deprecated alias of eval_strategy, but both are given" in capsys.readouterr().err


class RetryPlugin:
    """Declares ``acme_retries`` (int, default 2) and ``acme_mode`` (a choice)."""

    @hookimpl
    def treadle_add_arguments(self, schema):
        schema.add("acme_retries", type=int, default=2, help="retries")
        schema.add("acme_mode", type=str, default="fast", choices=("fast", "safe"), help="mode")


@pytest.fixture
def acme():
    pm = TreadlePluginManager(autoload=False)
    pm.register_module(RetryPlugin(), "acme")
    previous = get_plugin_manager()
    reset_plugin_manager(pm)
    yield pm
    reset_plugin_manager(previous)


def test_plugin_options_have_their_defaults_at_construction(acme):
    args = TrainingArguments("o")
    assert args.acme_retries == 2 and args.acme_mode == "fast"  # no Trainer needed
    assert TrainingArguments("o", plugin_options=None).plugin_options == {"acme_retries": 2, "acme_mode": "fast"}


def test_plugin_options_are_converted_and_the_callers_dict_is_left_alone(acme):
    given = {"acme_retries": "5"}
    args = TrainingArguments("o", plugin_options=given)
    assert args.acme_retries == 5 and given == {"acme_retries": "5"}
    args.acme_retries = 7  # one store: the attribute and plugin_options agree
    assert args.plugin_options["acme_retries"] == 7 and "acme_retries" not in vars(args)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"acme_retires": 3}, "plugin acme has no option 'acme_retires'; did you mean acme_retries?"),
        ({"acme_retries": "many"}, "--acme_retries expects"),
        ({"acme_mode": "quick"}, "--acme_mode 'quick' is not one of fast, safe"),
    ],
    ids=["misspelt", "wrong-type", "bad-choice"],
)
def test_bad_plugin_options_from_python_fail_at_construction(acme, options, message):
    with pytest.raises(UsageError, match="plugin_options") as err:
        TrainingArguments("o", plugin_options=options)
    assert message in str(err.value)


def test_options_of_a_plugin_not_installed_are_kept_with_a_warning(acme):
    with pytest.warns(UserWarning, match="no installed plugin declares 'wandb_project'"):
        args = TrainingArguments("o", plugin_options={"wandb_project": "demo"})
    assert args.wandb_project == "demo"


def test_a_parser_with_its_own_plugin_manager_builds_with_its_fields():
    pm = TreadlePluginManager(autoload=False)
    pm.register_module(RetryPlugin(), "acme")
    (args,) = TreadleArgumentParser(TrainingArguments, pm=pm).parse_args_into_dataclasses(["--acme_retries", "4"])
    assert args.acme_retries == 4 and args.acme_mode == "fast"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--output_dir", ""], "output_dir: is empty"),
        (["--per_device_train_batch_size", "99999999999999999999"],
         "per_device_train_batch_size: must be in [1, 2147483648), got 99999999999999999999"),
        (["--logging_dir", "afile"], "logging_dir: 'afile' is a file, not a directory"),
        (["--resume_from_checkpoint", ""], "resume_from_checkpoint: is empty"),
        (["--disable_tqdm", "maybe"], "--disable_tqdm takes true or false"),
        (["--fp16"], "--fp16: no installed plugin provides precision 'fp16'"),
    ],
    ids=["empty-output-dir", "huge-batch", "logging-dir-file", "empty-resume", "bool-word", "fp16"],
)
def test_bad_inputs_are_one_message_naming_what_was_typed(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    assert main(["train", *argv, "--max_steps", "1", "--report_to", "none"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "trainer_output").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
