"""Two FSDP2 processes of batch 8 train like one process of batch 16 (and like DDP), in every sharding mode.

The two processes start from the same seed and see, step by step, the two halves of the
single process's batch; gradients are averaged over the shards, so every mode must end within
float tolerance of the one-process run, with the same logged losses and global gradient norms.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
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
