"""Running treadle with DeepSpeed in real processes (CPU accelerator, gloo), and reading the results.

The first engine start in an environment compiles DeepSpeed's shared-memory op (30-90 s); the
build is cached in ``TORCH_EXTENSIONS_DIR`` (tox points it into the environment; otherwise the
pytest cache), so later runs take a few seconds each.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
TREADLE = [sys.executable, "-m", "treadle"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
COMMON = [
    "--task", "ds_task:build", "--max_steps", "8", "--learning_rate", "1e-3", "--logging_steps", "2",
    "--eval_strategy", "no", "--do_eval", "false", "--save_strategy", "no", "--disable_tqdm", "true",
    "--report_to", "none", "--seed", "11",
]
TOLERANCE = dict(rtol=1e-5, atol=1e-6)
_LAUNCHED = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
             "TREADLE_DISABLE_PLUGIN_AUTOLOAD")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(
    argv: list[str], *, extensions: Path, plugins: str = "deepspeed", timeout: float = 420, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """One command in a clean environment: not inside a launcher, only ``plugins`` loaded (plus ``env``)."""
    environ = {name: value for name, value in os.environ.items() if name not in _LAUNCHED}
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    bin_dir = str(Path(sys.executable).parent)  # the deepspeed launcher and its children find this python
    environ.update(
        OMP_NUM_THREADS="1", PYTHONPATH=path, TREADLE_PLUGINS=plugins, DS_ACCELERATOR="cpu", DS_BUILD_OPS="0",
        PATH=os.pathsep.join([bin_dir, environ.get("PATH", "")]),
    )
    environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions))
    environ.update(env or {})
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=environ)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def train(
    tmp: Path, name: str, *options: Any, launcher: list[str] = TREADLE, extensions: Path, plugins: str = "deepspeed",
    env: dict[str, str] | None = None,
) -> Path:
    output_dir = tmp / name
    ok(run([*launcher, "train", *COMMON, *options, "--output_dir", output_dir], extensions=extensions, plugins=plugins,
           env=env))
    return output_dir


def torchrun() -> list[str]:
    return [*TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "treadle"]


def deepspeed_launcher() -> list[str]:
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    return [launcher, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "treadle"]


def weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "model.safetensors"))


def history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def logged(output_dir: Path, key: str) -> list[float]:
    return [entry[key] for entry in history(output_dir) if key in entry and "train_runtime" not in entry]


def assert_same_weights(got: Path, expected: Path, **tolerance: float) -> None:
    got_weights, expected_weights = weights(got), weights(expected)
    assert got_weights.keys() == expected_weights.keys()
    for name in expected_weights:
        torch.testing.assert_close(got_weights[name], expected_weights[name], **(tolerance or TOLERANCE), msg=name)


def manifest(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "manifest.json").read_text())


def config_file(tmp: Path, name: str, config: dict) -> Path:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(config))
    return path
