"""Sharded DCP checkpoints: one shard per rank inside the core's manifest, exact resume, resharding on load.

One reference run of 2 ranks saves at steps 2 and 4. Resuming its step-2 checkpoint on 2 ranks
must end bitwise equal to it; on 1 rank (batch 16) and on 4 ranks (batch 4), which see the same
global batches, DCP reshards the weights and the optimizer state and the run ends within float
tolerance of it. load_best_model_at_end brings back the best checkpoint's shards (weights only).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from fsdp_kit import TinyNet, dataset, final_weights, losses, run_ranks, train, training_args

COMMON = dict(strategy="fsdp", fsdp="full_shard auto_wrap", save_strategy="steps", save_steps=2)


def _reference_and_resume(rank: int, root: str) -> None:
    train(f"{root}/reference", **COMMON)
    train(f"{root}/resumed", resume=f"{root}/reference/checkpoint-2", **COMMON)
    train(f"{root}/full", **{**COMMON, "max_steps": 2, "fsdp_config": {"fsdp_state_dict_type": "FULL_STATE_DICT"}})
    _best_model_at_end(f"{root}/best")


def _best_model_at_end(output_dir: str) -> None:
    """load_best_model_at_end reads the weights only (optimizer None) from the best sharded checkpoint."""
    from treadle import Trainer

    args = training_args(output_dir, **{**COMMON, "save_steps": 1}, eval_strategy="steps", eval_steps=1, learning_rate=0.5,
                         load_best_model_at_end=True, metric_for_best_model="loss")
    trainer = Trainer(args=args, model_init=TinyNet, train_dataset=dataset(), eval_dataset=dataset())
    with trainer:
        trainer.train()
        final = trainer.evaluate()["eval_loss"]
        evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e][:-1]
        Path(output_dir, "best.json").write_text(json.dumps({"evals": evals, "best": trainer.state.best_metric, "final": final}))


def _resume_on(rank: int, root: str, world: int) -> None:
    train(f"{root}/on{world}", resume=f"{root}/reference/checkpoint-2", **{**COMMON, "per_device_train_batch_size": 16 // world})


def _dcp_weights(checkpoint) -> dict[str, torch.Tensor]:
    """The model shards of a DCP checkpoint, read back without any process group into a plain module's state."""
    import torch.distributed.checkpoint as dcp

    state = {"model": TinyNet().state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoint / "fsdp"), no_dist=True)
    return state["model"]


def test_sharded_checkpoints_resume_exactly_and_reshard(tmp_path):
    run_ranks(2, _reference_and_resume, str(tmp_path))
    checkpoint = tmp_path / "reference" / "checkpoint-2"

    manifest = json.loads((checkpoint / "manifest.json").read_text())
    shards = {"fsdp/.metadata", "fsdp/__0_0.distcp", "fsdp/__1_0.distcp"}
    assert shards <= set(manifest["files"]), sorted(manifest["files"])
    assert set(manifest["pickled"]) == shards and manifest["strategy"] == "fsdp" and manifest["world_size"] == 2
    assert "model.safetensors" not in manifest["files"]  # the weights are the shards
    assert {"rng_state_0.json", "rng_state_1.json", "scheduler.json", "trainer_state.json"} <= set(manifest["files"])

    # same world size: bitwise the same run
    reference, resumed = final_weights(tmp_path / "reference"), final_weights(tmp_path / "resumed")
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key
    assert losses(tmp_path / "resumed") == losses(tmp_path / "reference")  # the history up to step 2 came back too

    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["best"] == min(best["evals"]) < best["evals"][-1] and best["final"] == best["best"]

    # FULL_STATE_DICT adds one consolidated model.safetensors, equal to the shards
    full = final_weights(tmp_path / "full" / "checkpoint-2")
    for key, value in _dcp_weights(checkpoint).items():
        assert torch.equal(full[key], value), key

    run_ranks(1, _resume_on, str(tmp_path), 1)
    run_ranks(4, _resume_on, str(tmp_path), 4)
    for world in (1, 4):
        got = final_weights(tmp_path / f"on{world}")
        for key in reference:
            torch.testing.assert_close(got[key], reference[key], atol=2e-6, rtol=1e-5, msg=f"{world} ranks: {key}")
        torch.testing.assert_close(losses(tmp_path / f"on{world}"), losses(tmp_path / "reference"), atol=1e-6, rtol=1e-5)
