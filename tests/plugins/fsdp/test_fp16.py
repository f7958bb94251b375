"""fp16 (treadle-amp's loss scaler) on two FSDP2 processes over gloo, against one process.

Each process unscales only its own shards, so an inf is seen by the process whose shard holds
it. The strategy hands the precision a reducer (``Precision.agree_on_overflow``) and both must
skip that step and lower the scale together. The test model puts an inf into one gradient
entry at step ``OVERFLOW_AT``, in the last row of the input layer's weight: FSDP2 splits the
weight by rows, so only rank 1's shard holds that row. One process with the same inf skips the
same step, so the two runs must agree on the scale at every step and end with close weights. A
resume from the checkpoint after the overflow must bring the lowered scale back on both ranks.

A third run splits a layer over tp=2 (``parallelism_config``) and puts the inf into rank 1's half
of its weight gradient. There torch's own reduction of the flag (DTensor's, over the mesh of the
first gradient, here a data-only one on a mesh of one process) does not reach rank 0: without
the reducer rank 0 would step and rank 1 skip. All runs share one pair of processes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from fsdp_kit import TinyNet, dataset, final_weights, losses, run_ranks, training_args
from treadle.markers import hookimpl
from treadle.plugins import reset_plugin_manager

pytestmark = pytest.mark.skipif(importlib.util.find_spec("treadle_amp") is None, reason="treadle-amp is not installed")

OVERFLOW_AT = 2
STEPS = 4
FP16 = dict(
    fp16=True, max_steps=STEPS, warmup_steps=0,  # the first step moves the weights too
    plugin_options={
        "amp_init_scale": 1024.0,  # small enough that no step overflows by itself
        "amp_growth_interval": 3,  # after a resume at step 3, a fresh scaler would show 1024, the restored one 512
    },
    save_strategy="steps", save_steps=3,
)
FSDP = dict(strategy="fsdp", fsdp="full_shard auto_wrap", fsdp_config={"transformer_layer_cls_to_wrap": ["Block"]})


class _InfInGradient(torch.autograd.Function):
    """Identity forward; backward sets the weight gradient's last-row first entry to inf."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor) -> torch.Tensor:
        return weight.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[-1, 0] = float("inf")
        return grad


class PoisonableLinear(torch.nn.Linear):
    poison = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _InfInGradient.apply(self.weight) if self.poison else self.weight
        return torch.nn.functional.linear(x, weight, self.bias)


class PoisonableNet(TinyNet):
    """TinyNet (same parameter names) whose input layer can overflow on demand."""

    def __init__(self) -> None:
        super().__init__()
        inp = PoisonableLinear(self.inp.in_features, self.inp.out_features)
        inp.load_state_dict(self.inp.state_dict())
        self.inp = inp


class TpNet(nn.Module):
    """Data-only input and output layers around a colwise / rowwise pair split over tp."""

    _tp_plan = {"up": "colwise", "down": "rowwise"}

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.up, self.down, self.head = nn.Linear(8, 16), nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.head(self.down(torch.relu(self.up(self.inp(x))))).squeeze(-1)
        return {"logits": out, "loss": nn.functional.mse_loss(out, labels)}


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class Recorder:
    """Poisons step ``OVERFLOW_AT``; records per step this process's view: the loss scale before and after,
    whether its own gradient shards were finite, and whether its weight shards moved."""

    def __init__(self, rank1_shard_of: str | None = None) -> None:
        self.steps: dict[int, dict[str, Any]] = {}
        self._before: list[torch.Tensor] = []
        self.rank1_shard_of = rank1_shard_of  # poison this parameter's local gradient on rank 1, not the backward

    @hookimpl
    def treadle_on_step_begin(self, trainer: Any, state: Any) -> None:
        step = state.global_step + 1
        if self.rank1_shard_of is None:
            trainer.model.inp.poison = step == OVERFLOW_AT
        self.steps[step] = {"scale_before": trainer.precision.log_values()["loss_scale"]}
        self._before = [_local(p).detach().clone() for p in trainer.model.parameters()]

    @hookimpl
    def treadle_on_pre_optimizer_step(self, trainer: Any, state: Any) -> None:
        if self.rank1_shard_of and state.global_step + 1 == OVERFLOW_AT and trainer.strategy.global_rank == 1:
            _local(trainer.model.get_parameter(self.rank1_shard_of).grad)[0, 0] = float("inf")
        grads = [_local(p.grad) for p in trainer.model.parameters() if p.grad is not None]
        self.steps[state.global_step + 1]["own_grads_finite"] = all(bool(torch.isfinite(g).all()) for g in grads)

    @hookimpl
    def treadle_on_step_end(self, trainer: Any, state: Any) -> None:
        now = [_local(p).detach() for p in trainer.model.parameters()]
        record = self.steps[state.global_step]
        record["scale_after"] = trainer.precision.log_values()["loss_scale"]
        record["weights_moved"] = any(not torch.equal(a, b) for a, b in zip(self._before, now, strict=True))

    @hookimpl
    def treadle_on_train_end(self, trainer: Any, args: Any) -> None:
        rank = trainer.strategy.global_rank
        Path(args.output_dir, f"record-{rank}.json").write_text(json.dumps(self.steps))


def _train(output_dir: Any, resume: Any = None, model_init: Any = PoisonableNet, recorder: Any = None, **overrides: Any) -> None:
    from treadle import Trainer

    trainer = Trainer(args=training_args(output_dir, **{**FP16, **overrides}), train_dataset=dataset(),
                      model_init=model_init, callbacks=[recorder or Recorder()])
    with trainer:
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        if trainer.is_world_process_zero():
            history = trainer.state.log_history
            Path(output_dir, "losses.json").write_text(json.dumps({
                "loss": [e["loss"] for e in history if "loss" in e],
                "grad_norm": [e["grad_norm"] for e in history if "grad_norm" in e],
                "skipped": history[-1].get("train_skipped_steps", 0),
            }))


def _two_ranks(rank: int, root: str) -> None:
    _train(f"{root}/fsdp", **FSDP)
    _train(f"{root}/resumed", resume=f"{root}/fsdp/checkpoint-3", **FSDP)
    # no clipping: the unscaling happens inside the scaler's step, after the hook poisoned the shard
    _train(f"{root}/tp", model_init=TpNet, recorder=Recorder(rank1_shard_of="up.weight"), strategy="fsdp",
           parallelism_config={"tp_size": 2}, max_grad_norm=0.0, save_strategy="no")


def _record(output: Path, rank: int = 0) -> dict[str, Any]:
    return json.loads((output / f"record-{rank}.json").read_text())


def test_an_overflow_in_one_shard_skips_the_step_on_both_ranks_like_one_process(tmp_path, monkeypatch):
    run_ranks(2, _two_ranks, str(tmp_path), plugins="fsdp,amp", timeout=240)
    monkeypatch.delenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TREADLE_PLUGINS", "amp")
    reset_plugin_manager()
    _train(tmp_path / "single", per_device_train_batch_size=16)

    single = _record(tmp_path / "single")
    rank0, rank1 = _record(tmp_path / "fsdp", 0), _record(tmp_path / "fsdp", 1)
    overflow = str(OVERFLOW_AT)
    # the inf reached rank 1's shard only ...
    assert rank0[overflow]["own_grads_finite"] and not rank1[overflow]["own_grads_finite"]
    # ... yet both ranks skipped the step (no shard moved) and halved the scale, like the single process
    for record in (single, rank0, rank1):
        assert record[overflow] | {"own_grads_finite": None} == {
            "scale_before": 1024.0, "scale_after": 512.0, "own_grads_finite": None, "weights_moved": False,
        }
        assert all(record[str(s)]["weights_moved"] for s in range(1, STEPS + 1) if s != OVERFLOW_AT)
    scales = lambda record: [(r["scale_before"], r["scale_after"]) for r in record.values()]  # noqa: E731
    assert scales(rank0) == scales(rank1) == scales(single) == [(1024.0, 1024.0), (1024.0, 512.0), (512.0, 512.0), (512.0, 512.0)]
    assert losses(tmp_path / "fsdp")["skipped"] == losses(tmp_path / "single")["skipped"] == 1

    # the normal steps train like one process (float16 rounding apart)
    got, want = final_weights(tmp_path / "fsdp"), final_weights(tmp_path / "single")
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=2e-3, rtol=2e-3, msg=key)
    torch.testing.assert_close(losses(tmp_path / "fsdp")["loss"], losses(tmp_path / "single")["loss"], atol=2e-3, rtol=2e-3)

    # the checkpoint after the overflow holds the lowered scale, and both resumed ranks start from it
    saved = json.loads((tmp_path / "fsdp" / "checkpoint-3" / "precision.json").read_text())["tree"]
    assert saved["scaler"]["scale"] == 512.0 and saved["scaler"]["_growth_tracker"] == 1 and saved["overflow_steps"] == 1
    for rank in range(2):
        resumed = _record(tmp_path / "resumed", rank)
        assert list(resumed) == [str(STEPS)] and scales(resumed) == [(512.0, 512.0)]  # a fresh scaler would show 1024
    for key, value in final_weights(tmp_path / "fsdp").items():
        torch.testing.assert_close(final_weights(tmp_path / "resumed")[key], value, atol=1e-6, rtol=1e-6, msg=key)

    # tp: the inf in rank 1's half of up.weight skips the step on rank 0 too
    tp0, tp1 = _record(tmp_path / "tp", 0), _record(tmp_path / "tp", 1)
    assert tp0[overflow]["own_grads_finite"] and not tp1[overflow]["own_grads_finite"]
    assert not tp0[overflow]["weights_moved"] and not tp1[overflow]["weights_moved"]
    assert scales(tp0) == scales(tp1) == scales(single)
