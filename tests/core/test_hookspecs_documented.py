"""Every hook is documented in docs/plugins/hooks.md, generated from the specs."""

from pathlib import Path

from treadle import hookspecs

REPO = Path(__file__).resolve().parents[2]


def test_every_hook_has_a_docstring_and_a_heading():
    page = (REPO / "docs" / "plugins" / "hooks.md").read_text()
    hooks = [name for name in vars(hookspecs) if name.startswith("treadle_")]
    assert len(hooks) >= 30
    for name in hooks:
        assert getattr(hookspecs, name).__doc__, name
        assert f"### `{name}`" in page, name
