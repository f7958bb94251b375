"""fp16 under DDP, two real processes over gloo: an overflow on one rank is skipped on both
(the all-reduced gradients carry the inf to every rank's scaler), so the replicas stay equal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_an_overflow_on_one_rank_is_skipped_on_every_rank(tmp_path):
    pytest.importorskip("treadle_ddp")
    env = {**os.environ, "TREADLE_PLUGINS": "amp,ddp", "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("TREADLE_DISABLE_PLUGIN_AUTOLOAD", None)
    argv = [sys.executable, "-m", "treadle", "train", "--nproc_per_node", "2", "--task", "amp_kit:overflow_on_rank0",
            "--fp16", "--max_steps", "6", "--logging_steps", "6", "--per_device_train_batch_size", "16",
            "--output_dir", str(tmp_path), "--report_to", "none", "--disable_tqdm", "--save_strategy", "no", "--do_eval", "false"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (logged,) = [e for e in json.loads((tmp_path / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert logged["skipped_steps"] == 1 and logged["loss_scale"] == 32768.0
    assert (tmp_path / "weights-rank0.txt").read_text() == (tmp_path / "weights-rank1.txt").read_text()
