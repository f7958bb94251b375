"""treadle-cuda everywhere: light registration, the auto order, and a clear "not here" on a machine without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from treadle.args import TrainingArguments
from treadle.config import check_arguments
from treadle.distributed import ProcessGroupStrategy
from treadle.errors import UsageError
from treadle.plugins import get_plugin_manager
from treadle.trainer import Trainer

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a CUDA device")


def test_hooks_module_does_not_import_torch():
    code = "import json, sys, treadle_cuda.hooks; print(json.dumps('torch' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False


def test_auto_order_is_cuda_then_mps_then_cpu():
    registry = get_plugin_manager().registry("backend")
    assert list(registry)[:3] == ["cuda", "mps", "cpu"]
    assert registry["cuda"].distribution == "treadle-cuda"
    assert get_plugin_manager().resolve("backend", "gpu", None).name == "cuda"


def test_process_groups_on_cuda_default_to_nccl(tmp_path):
    from treadle_cuda.backend import CudaBackend

    class Probe(ProcessGroupStrategy):
        def setup_model(self, model):
            return model

    for ddp_backend, expected in ((None, "nccl"), ("gloo", "gloo")):
        args = TrainingArguments(output_dir=str(tmp_path), ddp_backend=ddp_backend)
        strategy = Probe(args, CudaBackend(args), None)
        strategy.root_device = torch.device("cpu")  # the choice is the backend's, not the device type's
        assert strategy.process_group_backend() == expected


@no_gpu
def test_without_a_gpu_auto_takes_the_cpu_and_cuda_says_why_not(tmp_path):
    from treadle_cuda.backend import CudaBackend

    reason = CudaBackend.unavailable_reason()
    assert "built without CUDA" in reason or "no CUDA device visible" in reason
    assert TrainingArguments(output_dir=str(tmp_path)).device == torch.device("cpu")
    assert TrainingArguments(output_dir=str(tmp_path)).n_gpu == 0
    with pytest.raises(UsageError, match="--backend cuda: .*Use --backend cpu"):
        Trainer(model=torch.nn.Linear(2, 2), args=TrainingArguments(output_dir=str(tmp_path), backend="cuda"))


@no_gpu
def test_cli_with_backend_cuda_here_is_one_message(run_treadle):
    done = run_treadle("train", "--task", "demo", "--backend", "cuda", "--max_steps", "1",
                       env={"TREADLE_DISABLE_PLUGIN_AUTOLOAD": "", "TREADLE_PLUGINS": "cuda"})
    assert done.returncode == 2, done.stderr
    assert "--backend cuda:" in done.stderr and "Traceback" not in done.stderr


def test_env_lists_the_backends_and_the_gpus(capsys):
    from treadle.cli import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "- backends (--backend auto takes the first available):" in out
    if torch.cuda.is_available():
        assert "    - cuda (treadle-cuda): available" in out and "- cuda: gpu 0: " in out
    else:
        assert "    - cuda (treadle-cuda): not available: " in out and "- cuda: gpus: none: " in out
    assert "    - cpu (treadle): available" in out
    assert "- cuda: CUDA_VISIBLE_DEVICES: " in out


def test_tf32_on_a_non_cuda_backend_is_refused(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), backend="mps", tf32=True)
    with pytest.raises(UsageError, match="tf32: TF32 is a mode of CUDA GPUs"):
        check_arguments(args)


def test_use_cpu_and_no_cuda_still_force_the_cpu(tmp_path):
    assert TrainingArguments(output_dir=str(tmp_path), use_cpu=True).device == torch.device("cpu")
    with pytest.warns(FutureWarning, match="no_cuda"):
        args = TrainingArguments(output_dir=str(tmp_path), no_cuda=True)
    assert args.backend == "cpu" and args.device == torch.device("cpu") and args.n_gpu == 0
