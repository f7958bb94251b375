"""Write docs/reference/arguments.md from the TrainingArguments schema (run after changing a field).

tests/core/test_docs_current.py fails when the page and the schema disagree.
"""

import sys
from pathlib import Path

from treadle.config import core_fields

TARGET = Path(__file__).resolve().parent.parent / "docs" / "reference" / "arguments.md"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render() -> str:
    out = [
        "# Argument reference",
        "",
        "Generated from `treadle.args.TrainingArguments` by `tools/gen_arg_docs.py`; do not edit by hand.",
        "Every field is a command-line flag (`--name value`), a key of a JSON/YAML config file, and a",
        "keyword of `TrainingArguments`. Plugins add their own fields: `treadle train --help` lists them.",
    ]
    groups: dict[str, list] = {}
    for info in core_fields().values():
        groups.setdefault(info.group, []).append(info)
    for group, infos in groups.items():
        out += ["", f"## {group}", "", "| argument | type | default | meaning |", "| --- | --- | --- | --- |"]
        for info in infos:
            meaning = info.help
            if info.choices:
                meaning += f" Choices: {', '.join(map(str, info.choices))}."
            default = "unset" if info.default is None else repr(info.default)
            out.append(f"| `--{info.name}` | {info.shape} | `{_cell(default)}` | {_cell(meaning)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if TARGET.read_text() == render() else 1)
    TARGET.write_text(render())
