"""The command line: `treadle train --nproc_per_node 2 --fsdp ...` with a meta-device task, then `treadle evaluate`.

The strategy starts its own process group here (torchrun's environment), the task is built
inside its model_init_context, and the consolidated model it leaves in output_dir is what a
one-process `treadle evaluate --strategy fsdp` loads back (each rank keeping its shard of it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fsdp_kit import TinyNet, cli_env, final_weights

HERE = Path(__file__).resolve().parent
TREADLE = [sys.executable, "-m", "treadle"]
COMMON = ["--task", "fsdp_kit:cli_task", "--use_cpu", "--per_device_eval_batch_size", "8", "--disable_tqdm", "--seed", "7"]


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([*TREADLE, *argv], capture_output=True, text=True, env=cli_env(), cwd=cwd, timeout=240)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def test_train_with_nproc_per_node_then_evaluate_on_one_process(tmp_path):
    out = tmp_path / "out"
    _run(["train", "--nproc_per_node", "2", *COMMON, "--fsdp", "full_shard auto_wrap",
          "--fsdp_config", json.dumps({"fsdp_cpu_ram_efficient_loading": True}), "--max_steps", "2", "--save_steps", "2",
          "--per_device_train_batch_size", "8", "--learning_rate", "0.05", "--do_eval", "--output_dir", str(out)], tmp_path)
    manifest = json.loads((out / "checkpoint-2" / "manifest.json").read_text())
    assert {"fsdp/__0_0.distcp", "fsdp/__1_0.distcp"} <= set(manifest["files"]) and manifest["world_size"] == 2
    TinyNet().load_state_dict(final_weights(out), strict=True)
    trained = json.loads((out / "eval_results.json").read_text())["eval_loss"]

    _run(["evaluate", *COMMON, "--strategy", "fsdp", "--output_dir", str(out)], tmp_path)
    assert json.loads((out / "eval_results.json").read_text())["eval_loss"] == trained
