"""Running the ``treadle`` command as a user would, in its own process (the ``treadle_cli`` fixture).

A subprocess is the only honest way to check what a user sees: the exit status, one error line
instead of a traceback, and which modules a command imported. ``hide`` makes modules
unimportable in that process only, so "the plugin's library is missing" can be tested without
uninstalling anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional

_BOOT = """
import sys, json
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None  # import raises ModuleNotFoundError; importlib.util.find_spec says absent
from treadle.cli import main
sys.argv = ["treadle", *sys.argv[2:]]
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class CliResult:
    """What one ``treadle`` command did."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def assert_ok(self) -> "CliResult":
        assert self.returncode == 0, f"treadle {' '.join(self.argv)} exited {self.returncode}:\n{self.stderr[-3000:]}"
        return self

    def assert_clean_error(self, *fragments: str) -> "CliResult":
        """A non-zero exit with a ``treadle: error:`` message containing ``fragments``, no traceback."""
        assert self.returncode != 0, f"treadle {' '.join(self.argv)} succeeded, an error was expected"
        assert "Traceback" not in self.stderr, f"a traceback instead of one message:\n{self.stderr[-3000:]}"
        assert "treadle: error:" in self.stderr, f"no 'treadle: error:' line:\n{self.stderr[-3000:]}"
        for fragment in fragments:
            assert fragment in self.stderr, f"{fragment!r} not in the error:\n{self.stderr[-3000:]}"
        return self


def run_treadle(
    *argv: Any, env: Optional[dict] = None, hide: Iterable[str] = (), timeout: float = 300, cwd: Any = None
) -> CliResult:
    """Run ``treadle *argv`` with this interpreter; ``env`` entries are added to the environment
    (a value of None removes the variable)."""
    words = [str(a) for a in argv]
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = str(value)
    done = subprocess.run(
        [sys.executable, "-c", _BOOT, json.dumps(list(hide)), *words],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )
    return CliResult(words, done.returncode, done.stdout, done.stderr)
