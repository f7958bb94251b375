"""The generated documentation pages match the code they describe."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(tool: str):
    spec = importlib.util.spec_from_file_location(tool, REPO / "tools" / f"{tool}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "tool, page",
    [("gen_hook_docs", "docs/plugins/hooks.md"), ("gen_arg_docs", "docs/reference/arguments.md")],
)
def test_generated_page_is_current(tool, page):
    assert (REPO / page).read_text() == _load(tool).render(), f"run: python tools/{tool}.py"


def test_argument_reference_lists_every_field():
    from treadle.config import core_fields

    page = (REPO / "docs" / "reference" / "arguments.md").read_text()
    for name in core_fields():
        assert f"`--{name}`" in page
