"""Advice for a missing first-party plugin leads somewhere: its folder in the repository until it is published."""

from __future__ import annotations

import pytest
from treadle import install_hints
from treadle.cli import main
from treadle.errors import PluginError
from treadle.plugins import TreadlePluginManager


def test_a_missing_precision_says_how_to_install_it_from_the_repository():
    with pytest.raises(PluginError) as err:
        TreadlePluginManager(autoload=False).resolve("precision", "fp16")
    message = str(err.value)
    assert "pip install treadle-amp" not in message  # not published: that command would find nothing
    assert "plugins/treadle-amp" in message


def test_from_inside_the_checkout_the_command_is_relative(monkeypatch):
    root = install_hints.source_checkout()
    if root is None:
        pytest.skip("treadle is installed from a wheel here, not run from a checkout")
    monkeypatch.chdir(root)
    assert install_hints.install_command("treadle-amp") == "pip install ./plugins/treadle-amp"
    monkeypatch.chdir(root / "plugins")
    assert install_hints.install_command("treadle-amp") == "pip install ./treadle-amp"


def test_a_published_distribution_is_installed_by_name(monkeypatch):
    monkeypatch.setattr(install_hints, "PUBLISHED", frozenset({"treadle-amp"}))
    assert install_hints.install_command("treadle-amp") == "pip install treadle-amp"


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A checkout layout with one plugin that is installed (treadle-fixture-good) and one that is not."""
    (tmp_path / "packages" / "treadle").mkdir(parents=True)
    (tmp_path / "packages" / "treadle" / "pyproject.toml").write_text("[project]\nname = 'treadle'\n")
    for name in ("treadle-fixture-good", "treadle-not-installed-anywhere"):
        (tmp_path / "plugins" / name).mkdir(parents=True)
        (tmp_path / "plugins" / name / "pyproject.toml").write_text(f"[project]\nname = '{name}'\n")
    monkeypatch.setattr(install_hints, "source_checkout", lambda: tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_treadle_plugins_lists_first_party_plugins_that_are_not_installed(checkout, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "first-party plugins in this treadle checkout, not installed:" in out
    assert "treadle-not-installed-anywhere: pip install ./plugins/treadle-not-installed-anywhere" in out
    assert "treadle-fixture-good:" not in out  # installed (a fixture distribution of the test environment)


def test_the_readme_advises_installing_from_the_repository():
    root = install_hints.source_checkout()
    if root is None:
        pytest.skip("no checkout to read the README from")
    readme = (root / "README.md").read_text()
    assert "./plugins/treadle-" in readme and "pip install treadle-wandb" in readme and "not on PyPI yet" in readme
