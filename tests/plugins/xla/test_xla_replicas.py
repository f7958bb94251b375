"""Two XLA replicas for real: PJRT's CPU client with ``CPU_NUM_DEVICES=2`` under treadle-xla's launcher.

One launch (a fresh process: torch_xla's launcher refuses a process that already used XLA,
as this pytest process has) runs two ``treadle train`` commands on both replicas: six steps
with checkpoints at 3 and 6, then a resume from checkpoint 3. The replicas split each global
batch of 16 between them, so their losses, gradient norms and evaluations must match one
replica with a batch of 16, trained here in-process; the resume must repeat the last three
steps bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_xla_training import logged, train
from xla_tasks import seeded_regression

from treadle.args import TrainingArguments
from treadle.errors import UsageError
from treadle.trainer import Trainer

pytest.importorskip("torch_xla")
pytestmark = pytest.mark.usefixtures("installed_plugins")

HERE = Path(__file__).parent
OPTIONS = dict(max_steps=6, learning_rate=3e-3, seed=11, logging_steps=1, eval_strategy="steps", eval_steps=3,
               max_grad_norm=1.0, per_device_eval_batch_size=8)


@pytest.fixture(autouse=True)
def _pjrt_cpu(monkeypatch):
    monkeypatch.setenv("PJRT_DEVICE", "CPU")


def _cli(options: dict) -> list[str]:
    words = []
    for name, value in options.items():
        words += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return words


def _launch_two_replicas(tmp_path: Path) -> subprocess.CompletedProcess:
    common = ["--task", "xla_tasks:seeded_regression", "--backend", "xla", "--per_device_train_batch_size", "8",
              "--save_strategy", "steps", "--save_steps", "3", "--report_to", "none", "--disable_tqdm", "true",
              "--dataloader_pin_memory", "false", *_cli(OPTIONS)]
    commands = [
        ["train", *common, "--output_dir", str(tmp_path / "two")],
        ["train", *common, "--output_dir", str(tmp_path / "resumed"),
         "--resume_from_checkpoint", str(tmp_path / "two" / "checkpoint-3")],
    ]
    env = dict(os.environ, PJRT_DEVICE="CPU", CPU_NUM_DEVICES="2", TREADLE_DISABLE_PLUGIN_AUTOLOAD="",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    script = "import json, sys; from treadle_xla.launch import launch; launch(json.loads(sys.argv[1]))"
    return subprocess.run([sys.executable, "-c", script, json.dumps(commands)], env=env, capture_output=True,
                          text=True, timeout=420)


def _history(checkpoint: Path, key: str) -> list[float]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [entry[key] for entry in state["log_history"] if key in entry]


def test_two_replicas_train_like_one_with_the_same_global_batch_and_resume_exactly(tmp_path):
    from safetensors.torch import load_file

    done = _launch_two_replicas(tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("model and metrics saved in") == 2  # one replica reports, once per command
    two, resumed = tmp_path / "two" / "checkpoint-6", tmp_path / "resumed" / "checkpoint-6"

    one = train(seeded_regression, tmp_path / "one", "xla", per_device_train_batch_size=16, **OPTIONS)
    for key in ("loss", "grad_norm", "eval_loss", "eval_mae"):
        torch.testing.assert_close(_history(two, key), logged(one, key), rtol=2e-4, atol=1e-5, msg=key)
    assert _history(two, "eval_count") == [40.0, 40.0]  # every evaluation sample once, from both replicas
    weights = load_file(two / "model.safetensors")
    for name, value in one.model.state_dict().items():
        torch.testing.assert_close(weights[name], value.cpu(), rtol=1e-3, atol=1e-5, msg=name)

    # one writer: one set of weights and optimizer state, an RNG state per replica
    names = sorted(p.name for p in (tmp_path / "two" / "checkpoint-3").iterdir())
    assert [n for n in names if n.startswith("rng_state_")] == [f"rng_state_{r}.{e}" for r in (0, 1)
                                                                 for e in ("json", "safetensors")]
    assert names.count("model.safetensors") == 1 and "optimizer.safetensors" in names

    # the resume repeats steps 4-6 exactly (its history starts with the checkpoint's steps 1-3)
    for key in ("loss", "grad_norm", "eval_loss", "eval_mae"):
        assert _history(resumed, key) == _history(two, key), key
    again = load_file(resumed / "model.safetensors")
    assert all(torch.equal(again[name], weights[name]) for name in weights)
    at_three = load_file(tmp_path / "two" / "checkpoint-3" / "model.safetensors")
    assert not all(torch.equal(at_three[name], weights[name]) for name in weights)  # steps 4-6 did train


def test_processes_a_torchrun_launcher_started_are_refused(monkeypatch, tmp_path):
    """Under torchrun each process is a PJRT client of its own: N lone replicas, not one run."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = TrainingArguments(output_dir=str(tmp_path), backend="xla", strategy="xla", report_to=["none"])
    with pytest.raises(UsageError, match=r"WORLD_SIZE=2.*python -m treadle_xla.launch"):
        Trainer(model=seeded_regression(args).model, args=args)


def test_the_launcher_explains_itself_and_needs_a_device():
    env = dict(os.environ)
    env.pop("PJRT_DEVICE", None)
    shown = subprocess.run([sys.executable, "-m", "treadle_xla.launch", "--help"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert shown.returncode == 0 and "CPU_NUM_DEVICES" in shown.stdout
    from treadle_xla.backend import tpu_attached

    if not tpu_attached():
        refused = subprocess.run([sys.executable, "-m", "treadle_xla.launch", "train", "--backend", "xla"],
                                 capture_output=True, text=True, env=env, timeout=60)
        assert refused.returncode == 2 and "PJRT_DEVICE is not set" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_xla_fsdp_over_several_cpu_replicas_is_one_clear_message():
    """torch_xla's FSDP keeps its collectives inside the step's graph: XLA:CPU's threads hang on them."""
    from treadle_xla.strategy import check_fsdp_replicas

    check_fsdp_replicas(1)
    with pytest.raises(UsageError, match=r"'xla_fsdp' over 2 replicas of PJRT's CPU client.*strategy 'xla'"):
        check_fsdp_replicas(2)
