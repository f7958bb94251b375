"""Write docs/plugins/hooks.md from treadle.hookspecs (run after changing a hook).

tests/core/test_hookspecs_documented.py fails when the page and the specs disagree.
"""

import inspect
import sys
from pathlib import Path

from treadle import hookspecs

FAMILIES = [
    ("Registration", lambda n: n.startswith(("treadle_register_", "treadle_add_"))),
    ("Configuration and environment", lambda n: n in {
        "treadle_extend_catalog", "treadle_adjust_arguments", "treadle_validate_arguments", "treadle_resolve_component",
        "treadle_select_default", "treadle_render_model_card", "treadle_report_env"}),
    ("Lifecycle", lambda n: n.startswith("treadle_on_")),
    ("Derived metrics", lambda n: n == "treadle_derive_metrics"),
    ("Checkpoint state", lambda n: "checkpoint_state" in n or n == "treadle_fetch_checkpoint"),
]
OTHER = "Other hooks"
"""Where a hook no family claims is listed, so the page never leaves one out."""


def signature(func) -> str:
    return f"{func.__name__}{inspect.signature(func)}".replace("'", "")


def render() -> str:
    hooks = [(n, f) for n, f in vars(hookspecs).items() if n.startswith("treadle_") and callable(f)]
    out = [
        "# Hook reference",
        "",
        "Generated from `treadle/hookspecs.py` by `tools/gen_hook_docs.py`; do not edit by hand.",
        "Implement a hook with `from treadle import hookimpl`; an implementation may accept only",
        "the arguments it uses.",
    ]
    claimed = {name for name, _ in hooks if any(belongs(name) for _, belongs in FAMILIES)}
    families = FAMILIES + ([(OTHER, lambda n: n not in claimed)] if len(claimed) < len(hooks) else [])
    for title, belongs in families:
        out += ["", f"## {title}"]
        for name, func in hooks:
            if belongs(name):
                opts = getattr(func, "treadle_spec", {}) or {}
                mode = " (first result wins)" if opts.get("firstresult") else ""
                out += ["", f"### `{name}`{mode}", "", "```python", signature(func), "```", "", inspect.cleandoc(func.__doc__ or "")]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "plugins" / "hooks.md"
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == render() else 1)
    target.write_text(render())
