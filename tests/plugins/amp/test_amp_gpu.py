"""The same precisions on a CUDA device (skipped where there is none, or no CUDA backend plugin)."""

from __future__ import annotations

import pytest
import torch
from amp_kit import demo_trainer, losses, make_args

from treadle.errors import UsageError
from treadle.plugins import reset_plugin_manager

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def _with_the_cuda_backend(monkeypatch, _amp_plugin_loaded):
    monkeypatch.setenv("TREADLE_PLUGINS", "amp,cuda")
    reset_plugin_manager()
    from treadle.plugins import get_plugin_manager

    if "cuda" not in get_plugin_manager().names("backend"):
        pytest.skip("treadle-cuda is not installed")


def test_fp16_on_cuda_scales_on_the_device(tmp_path):
    trainer = demo_trainer(make_args(tmp_path, backend="cuda", fp16=True))
    assert trainer.precision.device.type == "cuda"
    assert trainer.precision.scaler._device == "cuda"
    trainer.train()
    logged = losses(trainer)
    assert logged[-1] < logged[0] and all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_bf16_on_cuda_trains_or_says_why_not(tmp_path):
    args = make_args(tmp_path, backend="cuda", bf16=True)
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        with pytest.raises(UsageError, match="bf16"):
            demo_trainer(args)
        return
    trainer = demo_trainer(args)
    trainer.train()
    logged = losses(trainer)
    assert logged[-1] < logged[0]


def test_cpu_amp_on_a_cuda_run_is_refused(tmp_path):
    with pytest.raises(UsageError, match="half_precision_backend cpu_amp asks for cpu autocast"):
        demo_trainer(make_args(tmp_path, backend="cuda", fp16=True, half_precision_backend="cpu_amp"))
