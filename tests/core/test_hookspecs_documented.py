"""Every hook is documented in docs/plugins/hooks.md, generated from the specs."""

import importlib.util
from pathlib import Path

from treadle import hookspecs

REPO = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_hook_docs", REPO / "tools" / "gen_hook_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hook_reference_is_current():
    page = (REPO / "docs" / "plugins" / "hooks.md").read_text()
    assert page == _generator().render(), "run: python tools/gen_hook_docs.py"


def test_every_hook_has_a_docstring_and_a_heading():
    page = (REPO / "docs" / "plugins" / "hooks.md").read_text()
    hooks = [name for name in vars(hookspecs) if name.startswith("treadle_")]
    assert len(hooks) >= 30
    for name in hooks:
        assert getattr(hookspecs, name).__doc__, name
        assert f"### `{name}`" in page, name
