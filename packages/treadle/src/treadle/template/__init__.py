"""``treadle plugin new NAME --kind KIND``: write a plugin distribution that installs and passes as generated.

The files come from ``treadle.template.files`` (one implementation and one test module per kind);
this module works out the names and writes them. Standard library only: the command runs without
torch, like the rest of the command line.

Names, from the distribution name (``acme-treadle-glow``):
  import package  ``acme_treadle_glow``      (the distribution name in snake case)
  entry point     ``acme_glow``              (the words without "treadle"; also the namespace of
                                              the plugin's argument fields, ``--acme_glow_*``)
  component       ``acme_glow``              (what users type: ``--report_to acme_glow``)
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from treadle.errors import UsageError

KINDS = ("reporter", "backend", "precision", "strategy", "optimizer", "scheduler", "task")
"""The kinds the template writes; each has an implementation and a conformance test in ``files``."""

_DISTRIBUTION = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class PluginNames:
    distribution: str
    package: str
    entry_point: str
    component: str
    class_prefix: str
    kind: str


def plugin_names(distribution: str, kind: str) -> PluginNames:
    """The names of a new plugin, or a ``UsageError`` saying what is wrong with ``distribution``."""
    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r}: the template knows {', '.join(KINDS)}")
    if not _DISTRIBUTION.match(distribution):
        raise UsageError(
            f"plugin name {distribution!r}: use lower-case words joined by '-' (e.g. acme-treadle-glow)"
        )
    words = distribution.split("-")
    own = [w for w in words if w != "treadle"]
    if not own:
        raise UsageError("plugin name 'treadle' is the core's; add your own word (e.g. acme-treadle-glow)")
    entry_point = "_".join(own)
    package = distribution.replace("-", "_")
    if keyword.iskeyword(entry_point) or keyword.iskeyword(package):
        raise UsageError(f"plugin name {distribution!r} makes a Python keyword; choose another")
    return PluginNames(distribution, package, entry_point, entry_point, "".join(w.capitalize() for w in own), kind)


def render(names: PluginNames) -> dict[str, str]:
    """Relative path -> text of every file of the new distribution."""
    from treadle.__about__ import __version__
    from treadle.template import files

    values = {
        "distribution": names.distribution, "package": names.package, "entry_point": names.entry_point,
        "component": names.component, "Cls": names.class_prefix, "kind": names.kind,
        "treadle_version": __version__, "selector": files.SELECTORS[names.kind],
    }
    kind_files = files.KIND_FILES[names.kind]
    out = {
        "pyproject.toml": files.PYPROJECT,
        "README.md": files.README,
        f"src/{names.package}/__init__.py": files.INIT,
        f"src/{names.package}/py.typed": "",
        f"src/{names.package}/hooks.py": kind_files["hooks"],
        f"src/{names.package}/{names.kind}.py": kind_files["impl"],
        "tests/conftest.py": files.CONFTEST,
        "tests/test_conformance.py": kind_files["test"],
    }
    return {path: Template(text).substitute(values) for path, text in out.items()}


def write_plugin(distribution: str, kind: str, parent: Path, *, force: bool = False) -> Path:
    """Write the distribution into ``parent/distribution``; refuses to overwrite unless ``force``."""
    names = plugin_names(distribution, kind)
    root = Path(parent) / distribution
    if root.exists() and any(root.iterdir()) and not force:
        raise UsageError(f"{root} exists and is not empty (pass --force to write over it)")
    for relative, text in render(names).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


USAGE = f"""usage: treadle plugin new NAME --kind KIND [--dir PARENT] [--force]

Write a new plugin distribution NAME (e.g. acme-treadle-glow) into PARENT/NAME (default: the
current directory): pyproject.toml (hatchling), a light hooks module, the implementation, a
README and tests built on treadle's conformance kit. It installs and its tests pass as written:

    pip install -e ./NAME && pytest NAME/tests

KIND: {', '.join(KINDS)}
"""


def run_cli(rest: list[str]) -> int:
    """``treadle plugin ...`` (argument parsing by hand: argparse would add nothing but a traceback risk)."""
    if not rest or rest[0] in {"-h", "--help"}:
        print(USAGE, end="")
        return 0
    if rest[0] != "new":
        raise UsageError(f"treadle plugin: unknown subcommand {rest[0]!r} (the only one is 'new')")
    words, options = rest[1:], {"--kind": None, "--dir": ".", "--force": False}
    positional: list[str] = []
    while words:
        word = words.pop(0)
        if word in {"-h", "--help"}:
            print(USAGE, end="")
            return 0
        key, _, value = word.partition("=")
        if key == "--force":
            options["--force"] = True
        elif key in options:
            if not value:
                if not words:
                    raise UsageError(f"treadle plugin new: {key} needs a value")
                value = words.pop(0)
            options[key] = value
        elif word.startswith("-"):
            raise UsageError(f"treadle plugin new: unknown option {word!r} (options: --kind, --dir, --force)")
        else:
            positional.append(word)
    if len(positional) != 1:
        raise UsageError("treadle plugin new takes one NAME (the distribution name, e.g. acme-treadle-glow)")
    if options["--kind"] is None:
        raise UsageError(f"treadle plugin new: --kind is required ({', '.join(KINDS)})")
    root = write_plugin(positional[0], str(options["--kind"]), Path(str(options["--dir"])), force=bool(options["--force"]))
    names = plugin_names(positional[0], str(options["--kind"]))
    print(f"wrote {root}")
    print(f"  entry point {names.entry_point} -> {names.package}.hooks; {names.kind} '{names.component}'")
    print(f"  next: pip install -e {root} && pytest {root / 'tests'}")
    return 0
