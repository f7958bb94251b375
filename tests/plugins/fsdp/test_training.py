"""Two FSDP2 processes of batch 8 train like one process of batch 16 (and like DDP), in every sharding mode.

The two processes start from the same seed and see, step by step, the two halves of the
single process's batch; gradients are averaged over the shards, so every mode must end within
float tolerance of the one-process run, with the same logged losses and global gradient norms.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from treadle.plugins import reset_plugin_manager
from fsdp_kit import TinyNet, final_weights, losses, run_ranks, train

# (output name, overrides): each runs in the same two processes, one after another
MODES = {
    "full_shard": dict(fsdp="full_shard", fsdp_config={"transformer_layer_cls_to_wrap": ["Block"]}),
    "shard_grad_op": dict(fsdp="shard_grad_op auto_wrap", fsdp_config={"forward_prefetch": True}),
    "no_shard": dict(fsdp="no_shard"),
    "hybrid_shard": dict(fsdp="hybrid_shard", fsdp_config={"min_num_params": 200, "activation_checkpointing": True}),
    "offload": dict(fsdp="full_shard offload auto_wrap"),
    # two micro-batches of 4 per step: the first keeps its gradients unreduced (no_backward_sync)
    "accumulate": dict(fsdp="full_shard auto_wrap", per_device_train_batch_size=4, gradient_accumulation_steps=2),
}


def _fsdp_modes(rank: int, root: str) -> None:
    for name, overrides in MODES.items():
        train(f"{root}/{name}", **{"strategy": "fsdp", **overrides})


def _ddp(rank: int, root: str) -> None:
    train(f"{root}/ddp", strategy="ddp")


def _assert_same_training(output, reference, atol=2e-6):
    got, want = final_weights(output), final_weights(reference)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=atol, rtol=1e-5, msg=f"{output.name}: {key}")
    torch.testing.assert_close(losses(output)["loss"], losses(reference)["loss"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(losses(output)["grad_norm"], losses(reference)["grad_norm"], atol=1e-6, rtol=1e-5)


def test_two_ranks_train_like_one_process_in_every_mode(tmp_path):
    train(tmp_path / "single", per_device_train_batch_size=16)
    run_ranks(2, _fsdp_modes, str(tmp_path))
    for name in MODES:
        _assert_same_training(tmp_path / name, tmp_path / "single")
    # the consolidated model.safetensors is a plain state dict of the user's module
    plain = TinyNet()
    plain.load_state_dict(final_weights(tmp_path / "full_shard"), strict=True)


@pytest.mark.skipif(importlib.util.find_spec("treadle_ddp") is None, reason="treadle-ddp is not installed")
def test_fsdp_matches_ddp(tmp_path):
    run_ranks(2, _ddp, str(tmp_path), plugins="ddp")
    run_ranks(2, _fsdp_modes_full_only, str(tmp_path))
    _assert_same_training(tmp_path / "full_shard", tmp_path / "ddp")


def _fsdp_modes_full_only(rank: int, root: str) -> None:
    train(f"{root}/full_shard", **{"strategy": "fsdp", **MODES["full_shard"]})


def _bf16(rank: int, root: str) -> None:
    seen = []

    def record(module, inputs):
        seen.append(module.weight.dtype)

    def model_init():
        model = TinyNet()
        model.blocks[0].linear.register_forward_pre_hook(record)
        return model

    trainer = train(f"{root}/bf16", model_init=model_init, strategy="fsdp", fsdp="full_shard auto_wrap", bf16=True)
    kept = {p.dtype for p in trainer.model.parameters()}
    Path(root, f"bf16-{rank}.json").write_text(json.dumps({"forward": sorted({str(d) for d in seen}), "kept": sorted(map(str, kept))}))


@pytest.mark.skipif(importlib.util.find_spec("treadle_amp") is None, reason="treadle-amp is not installed")
def test_bf16_precision_sets_the_mixed_precision_policy(tmp_path, monkeypatch):
    """treadle-amp's bf16 through the Precision contract: layers compute with bf16 copies of the weights
    (FSDP2 all-gathers in bf16), the shards and the optimizer stay float32, and the run ends close to
    one process under the same precision."""
    run_ranks(2, _bf16, str(tmp_path), plugins="fsdp,amp")
    for rank in range(2):
        report = json.loads((tmp_path / f"bf16-{rank}.json").read_text())
        assert report == {"forward": ["torch.bfloat16"], "kept": ["torch.float32"]}
    monkeypatch.delenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TREADLE_PLUGINS", "amp")
    reset_plugin_manager()
    train(tmp_path / "single-bf16", per_device_train_batch_size=16, bf16=True)
    got, want = final_weights(tmp_path / "bf16"), final_weights(tmp_path / "single-bf16")
    assert all(v.dtype == torch.float32 for v in got.values())
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=2e-2, rtol=2e-2, msg=key)
