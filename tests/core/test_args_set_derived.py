"""A plugin that fills an argument from elsewhere says why: ``TrainingArguments.set_derived``.

``treadle args`` shows the plugin's reason as the value's source (not "default"), the ``set_*``
helpers keep the value and its reason, and ``replace()`` lets the plugin derive it again.
"""

from __future__ import annotations

import json

import pytest

from treadle import hookimpl
from treadle.args import TrainingArguments
from treadle.cli import main
from treadle.config import parse_arguments
from treadle.plugins import TreadlePluginManager, get_plugin_manager, reset_plugin_manager


class SiteProfile:
    """Reads ``--acme_profile FILE`` (a JSON object of argument values) and adopts its values."""

    @hookimpl
    def treadle_add_arguments(self, schema):
        schema.add("acme_profile", type=str, default=None, help="a JSON file of argument values")
        schema.add("acme_queue", type=str, default="default", help="the queue the job runs on")

    @hookimpl
    def treadle_adjust_arguments(self, args, explicit):
        if not args.acme_profile:
            return
        with open(args.acme_profile) as fh:
            values = json.load(fh)
        for name, value in values.items():
            if name not in explicit:
                args.set_derived(name, value, f"implied by {name} in the site profile {args.acme_profile}")


@pytest.fixture
def acme(tmp_path):
    pm = TreadlePluginManager(autoload=False)
    pm.register_module(SiteProfile(), "acme")
    previous = get_plugin_manager()
    reset_plugin_manager(pm)
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"learning_rate": 0.25, "acme_queue": "gpu-long", "warmup_steps": 3}))
    yield pm, str(profile)
    reset_plugin_manager(previous)


def test_treadle_args_shows_the_reason_a_plugin_gave(acme, capsys):
    pm, profile = acme
    parsed = parse_arguments(["--acme_profile", profile, "--warmup_steps", "5"], pm)
    assert parsed.args.learning_rate == 0.25 and parsed.args.acme_queue == "gpu-long"
    assert parsed.sources["learning_rate"] == f"implied by learning_rate in the site profile {profile}"
    assert parsed.sources["acme_queue"] == f"implied by acme_queue in the site profile {profile}"  # a plugin option too
    assert parsed.args.warmup_steps == 5 and parsed.sources["warmup_steps"] == "command line"  # the user's value stays

    assert main(["args", "--acme_profile", profile, "--changed", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["learning_rate"] == {"value": 0.25, "source": f"implied by learning_rate in the site profile {profile}"}
    assert shown["acme_queue"]["source"].startswith("implied by acme_queue")


def test_the_set_helpers_keep_a_derived_value_and_replace_derives_it_again():
    args = TrainingArguments("out", report_to="none")
    args.set_derived("learning_rate", 0.25, "implied by the site profile")
    assert args.learning_rate == 0.25
    assert args.derived_fields()["learning_rate"] == "implied by the site profile"

    args.set_logging(steps=7)  # re-derives the core's values: the plugin's stays, with its reason
    assert args.learning_rate == 0.25 and args.derived_fields()["learning_rate"] == "implied by the site profile"
    args.set_training(learning_rate=0.5)  # the user now chose it: no longer derived
    assert args.learning_rate == 0.5 and "learning_rate" not in args.derived_fields()

    again = TrainingArguments("out", report_to="none")
    again.set_derived("learning_rate", 0.25, "implied by the site profile")
    copy = again.replace(max_steps=3)  # the plugin's hook derives it for the new instance, from its settings
    assert copy.learning_rate == TrainingArguments("out").learning_rate and "learning_rate" not in copy.derived_fields()


def test_a_value_the_core_derived_first_is_derived_again_by_the_core_after_replace():
    args = TrainingArguments("out", report_to="none")
    core_reason = args.derived_fields()["strategy"]  # one process: the core's default choice
    args.set_derived("strategy", "acme_cluster", "implied by the site profile")
    assert args.strategy == "acme_cluster" and args.derived_fields()["strategy"] == "implied by the site profile"
    copy = args.replace(max_steps=3)
    assert copy.strategy == "single" and copy.derived_fields()["strategy"] == core_reason  # not given by the user


def test_a_misspelt_name_or_an_empty_reason_is_refused():
    args = TrainingArguments("out", report_to="none")
    with pytest.raises(TypeError, match="learning_rat"):
        args.set_derived("learning_rat", 0.1, "implied by something")
    with pytest.raises(TypeError, match="reason"):
        args.set_derived("learning_rate", 0.1, "")
