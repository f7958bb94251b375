"""``treadle plugin new``: every kind the template writes installs and passes its own tests as written.

Each generated distribution is built and installed for real (pip, hatchling, no network) into
a folder of its own, and its tests run in a fresh pytest process with that folder on the path,
the way a third-party author would run them; the repository's conftest is not involved.
The example plugin under tests/example-plugin is the reporter template's output, kept in step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from treadle.template import KINDS, plugin_names, render

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "tests" / "example-plugin" / "acme-treadle-csv"


def _treadle(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "treadle", *argv], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_every_kind_installs_and_passes_as_generated(tmp_path):
    """One distribution per kind, installed together (one pip call) and tested in one pytest run."""
    roots = []
    for kind in KINDS:
        done = _treadle("plugin", "new", f"acme-treadle-{kind}x", "--kind", kind, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        roots.append(tmp_path / f"acme-treadle-{kind}x")
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), *map(str, roots)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert all((site / f"acme_treadle_{kind}x" / "py.typed").is_file() for kind in KINDS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    env.pop("TREADLE_DISABLE_PLUGIN_AUTOLOAD", None)
    listed = subprocess.run([sys.executable, "-m", "treadle", "plugins"], capture_output=True, text=True, env=env, cwd=tmp_path)
    for kind in KINDS:
        line = next(line for line in listed.stdout.splitlines() if line.startswith(f"acme_{kind}x "))
        assert "[ok]" in line, listed.stdout
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--import-mode=importlib",
         "-rs", *(str(root / "tests") for root in roots)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )
    assert tests.returncode == 0, tests.stdout[-6000:] + tests.stderr[-2000:]
    assert "failed" not in tests.stdout and "error" not in tests.stdout.lower()


def test_the_example_plugin_is_the_template_output():
    """tests/example-plugin/acme-treadle-csv is what `treadle plugin new acme-treadle-csv --kind reporter` writes."""
    expected = render(plugin_names("acme-treadle-csv", "reporter"))
    found = {p.relative_to(EXAMPLE).as_posix(): p.read_text() for p in EXAMPLE.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert found == expected, "regenerate it: treadle plugin new acme-treadle-csv --kind reporter --dir tests/example-plugin --force"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["new", "Acme_Glow", "--kind", "reporter"], "lower-case words"),
        (["new", "treadle", "--kind", "reporter"], "the core's"),
        (["new", "acme-glow", "--kind", "kernel"], "the template knows"),
        (["new", "acme-glow"], "--kind is required"),
        (["frobnicate"], "unknown subcommand"),
    ],
)
def test_mistakes_are_one_message(tmp_path, argv, message):
    done = _treadle("plugin", *argv, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_an_existing_folder_is_not_overwritten(tmp_path):
    assert _treadle("plugin", "new", "acme-glow", "--kind", "task", cwd=tmp_path).returncode == 0
    again = _treadle("plugin", "new", "acme-glow", "--kind", "task", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr


def test_names_follow_the_rules():
    names = plugin_names("acme-treadle-glow", "reporter")
    assert (names.package, names.entry_point, names.component) == ("acme_treadle_glow", "acme_glow", "acme_glow")
    assert plugin_names("treadle-glow", "backend").entry_point == "glow"
