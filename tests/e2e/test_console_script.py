"""The installed ``treadle`` console script, not ``python -m treadle``: their sys.path differs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TASK_MODULE = """
from treadle.builtin.demo_task import build as demo_build


def build(args):
    print("USER TASK BUILT")
    return demo_build(args)
"""


def _console_script() -> str:
    script = Path(sys.executable).parent / ("treadle.exe" if os.name == "nt" else "treadle")
    if not script.is_file():
        pytest.skip(f"no treadle console script next to {sys.executable}")
    return str(script)


def test_console_script_imports_a_task_module_from_the_current_directory(tmp_path):
    """`python -m` puts the current directory on sys.path; the console script must act the same."""
    (tmp_path / "mymod.py").write_text(TASK_MODULE)
    result = subprocess.run(
        [_console_script(), "train", "--task", "mymod:build", "--max_steps", "1", "--eval_strategy", "no",
         "--report_to", "none", "--disable_tqdm", "true", "--output_dir", "out"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "TREADLE_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "USER TASK BUILT" in result.stdout
    assert "trained 1 steps" in result.stdout
