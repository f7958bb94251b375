"""treadle-cuda on a real GPU (marked ``gpu``; skipped where no CUDA device is visible)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from treadle.args import TrainingArguments
from treadle.builtin.demo_task import build as build_demo
from treadle.errors import UsageError
from treadle.trainer import Trainer
from treadle.verify_resume import verify_resume

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def make_args(output_dir, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(output_dir), backend="cuda", max_steps=10, per_device_train_batch_size=32,
                  learning_rate=3e-3, seed=7, report_to=["none"], disable_tqdm=True, save_strategy="no", logging_steps=2)
    values.update(overrides)
    return TrainingArguments(**values)


def demo_trainer(args, dropout=True) -> Trainer:
    parts = build_demo(args)
    if not dropout:
        for module in parts.model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    return Trainer(model=parts.model, args=args, train_dataset=parts.train_dataset, eval_dataset=parts.eval_dataset)


def test_device_follows_local_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert make_args(tmp_path).device == torch.device("cuda", 0) and make_args(tmp_path).n_gpu == 1
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count()))
    with pytest.raises(UsageError, match="only .* CUDA device"):
        _ = make_args(tmp_path).device


def test_cuda_visible_devices_hides_the_gpus(tmp_path):
    code = "from treadle_cuda.backend import CudaBackend; print(CudaBackend.unavailable_reason())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert "no CUDA device visible (CUDA_VISIBLE_DEVICES '')" in out.stdout


def test_trains_on_the_gpu_like_the_cpu(tmp_path):
    gpu = demo_trainer(make_args(tmp_path / "gpu", tf32=False, skip_memory_metrics=False, torch_empty_cache_steps=3),
                       dropout=False)
    result = gpu.train()
    cpu = demo_trainer(make_args(tmp_path / "cpu", backend="cpu"), dropout=False)
    cpu.train()
    assert next(gpu.model.parameters()).device.type == "cuda"
    assert gpu.train_dataloader.pin_memory
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (gpu, cpu)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-3, atol=0)
    assert "train_mem_gpu_alloc_delta" in result.metrics and result.metrics["train_mem_gpu_peaked_delta"] >= 0


def test_tf32_is_set_as_asked(tmp_path):
    from treadle_cuda.backend import tf32_enabled

    if torch.cuda.get_device_capability() < (8, 0):
        with pytest.raises(UsageError, match="TF32 needs 8.0"):
            demo_trainer(make_args(tmp_path, tf32=True))
        return
    demo_trainer(make_args(tmp_path, tf32=True))
    assert tf32_enabled()
    demo_trainer(make_args(tmp_path, tf32=False))
    assert not tf32_enabled()


def test_resume_on_the_gpu_is_exact_and_keeps_the_cuda_generator(tmp_path):
    (tmp_path / "verify").mkdir()
    report = verify_resume(make_args(tmp_path / "unused", max_steps=8), 4, task="demo", workdir=tmp_path / "verify")
    assert report.identical, str(report)
    trainer = demo_trainer(make_args(tmp_path / "run", max_steps=2, save_strategy="steps", save_steps=2))
    trainer.train()
    from safetensors.torch import load_file

    assert any("cuda" in key for key in load_file(tmp_path / "run" / "checkpoint-2" / "rng_state.safetensors"))
