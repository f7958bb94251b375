"""A plugin's option given while the plugin is not loaded names the plugin, not the nearest core argument."""

import pytest

from treadle.config import parse_arguments
from treadle.errors import UsageError


def test_a_blocked_plugins_option_says_so(installed_plugins, monkeypatch):
    monkeypatch.setenv("TREADLE_BLOCKED_PLUGINS", "fixture_good")
    with pytest.raises(UsageError, match=r"--fixture_good_tag; it belongs to the plugin fixture_good \(treadle-fixture-good\), which is blocked"):
        parse_arguments(["--fixture_good_tag", "x"])


def test_a_first_party_plugins_option_names_its_distribution(monkeypatch):
    with pytest.raises(UsageError, match=r"--wandb_project; it belongs to the plugin treadle-wandb") as caught:
        parse_arguments(["--wandb_project", "x"])
    assert "did you mean" not in str(caught.value)


def test_a_typo_still_gets_a_suggestion():
    with pytest.raises(UsageError, match="did you mean --learning_rate"):
        parse_arguments(["--learnin_rate", "3"])
