"""fp16's loss scaler: overflowing steps are skipped, counted and logged; the NaN/Inf policy and the
scaler agree; the scaler's state survives a checkpoint, so a resume is exact on CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch
from amp_kit import DisturbStep, demo_trainer, disturbed_demo, make_args, weights

from treadle.markers import hookimpl
from treadle.verify_resume import verify_resume
from treadle_amp.precision import Fp16MixedPrecision


class WeightsAfterEachStep:
    def __init__(self) -> None:
        self.after: list[dict[str, torch.Tensor]] = []
        self.lr: list[float] = []

    @hookimpl
    def treadle_on_step_end(self, trainer) -> None:
        self.after.append(weights(trainer.model))
        self.lr.append(trainer.lr_scheduler.get_last_lr()[0])


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_an_overflowing_step_is_skipped_counted_and_logged(tmp_path, caplog):
    probe = WeightsAfterEachStep()
    args = make_args(tmp_path, fp16=True, max_steps=8, logging_steps=4, lr_scheduler_type="linear")
    trainer = demo_trainer(args, callbacks=[DisturbStep(at=3, factor=1e6), probe])
    with caplog.at_level("WARNING", logger="treadle"):
        out = trainer.train()

    assert _same(probe.after[1], probe.after[2])  # step 3 changed no weight
    assert not _same(probe.after[2], probe.after[3])
    assert probe.lr[1] == probe.lr[2]  # and did not advance the schedule
    first, second = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert first["skipped_steps"] == 1 and first["loss_scale"] == 32768.0
    assert "skipped_steps" not in second
    assert out.metrics["train_skipped_steps"] == 1
    assert trainer.precision.overflow_steps == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("fp16: optimizer step skipped, gradients overflowed" in m and "65536 to 32768" in m for m in messages)


def test_the_nan_policy_drops_a_step_and_the_scaler_backs_off_too(tmp_path, caplog):
    probe = WeightsAfterEachStep()
    args = make_args(tmp_path, fp16=True, max_steps=6, logging_steps=6, nan_inf_policy="skip_step", max_grad_norm=1.0)
    trainer = demo_trainer(args, callbacks=[DisturbStep(at=2, factor=math.nan), probe])
    with caplog.at_level("WARNING", logger="treadle"):
        out = trainer.train()

    assert _same(probe.after[0], probe.after[1])  # the dropped step changed nothing
    assert trainer.precision.scaler.get_scale() == 32768.0  # one back-off, for the dropped step
    assert trainer.precision.overflow_steps == 1
    (logged,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged["skipped_steps"] == 1 and logged["loss_scale"] == 32768.0  # counted once, not twice
    assert out.metrics["train_skipped_steps"] == 1
    assert any("nan_inf_policy skip_step" in r.getMessage() for r in caplog.records)
    # the next step unscaled and stepped normally: GradScaler's per-step bookkeeping was reset
    assert not _same(probe.after[1], probe.after[2])


def test_a_dropped_step_with_finite_gradients_still_lowers_the_scale(tmp_path):
    trainer = demo_trainer(make_args(tmp_path, fp16=True, max_steps=1))
    precision = trainer.precision
    weight = torch.ones(3, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    precision.backward((weight * 2.0).sum())  # finite gradients
    precision.skip_step(optimizer)
    assert precision.scaler.get_scale() == 32768.0 and precision.overflow_steps == 1
    assert torch.equal(weight.detach(), torch.ones(3))


def test_the_scaler_state_is_in_the_checkpoint(tmp_path):
    args = make_args(tmp_path, fp16=True, max_steps=6, save_strategy="steps", save_steps=6)
    demo_trainer(args, callbacks=[DisturbStep(at=2, factor=1e6)]).train()
    saved = json.loads((tmp_path / "out" / "checkpoint-6" / "precision.json").read_text())["tree"]
    assert saved["overflow_steps"] == 1
    assert saved["scaler"]["scale"] == 32768.0 and saved["scaler"]["_growth_tracker"] == 4

    resumed = demo_trainer(make_args(tmp_path, fp16=True, max_steps=7))
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-6"))
    assert resumed.precision.scaler.state_dict()["_growth_tracker"] == 5
    assert resumed.precision.overflow_steps == 1


def _resume_args(tmp_path, **overrides):
    values = dict(fp16=True, max_steps=12, logging_steps=3, max_grad_norm=1.0, lr_scheduler_type="cosine", warmup_steps=2)
    return make_args(tmp_path / "unused", **{**values, **overrides})


@pytest.mark.parametrize("overflow_at", [3, 9], ids=["overflow-before-the-stop", "overflow-after-the-stop"])
def test_fp16_resume_is_bitwise_exact(tmp_path, overflow_at):
    report = verify_resume(_resume_args(tmp_path), stop_at=6, task=disturbed_demo(overflow_at, 1e6), workdir=tmp_path)
    assert report.identical, str(report)
    assert len(report.resumed) == 12


# A scale far too large to start with and quick to grow again: the scaler skips steps until the
# scale fits, then grows into overflows now and then. Which steps are skipped depends on the
# scale reached, so the resumed run matches only if the scaler state came back with it.
BUSY_SCALER = {"plugin_options": {"amp_init_scale": 2.0**18, "amp_growth_interval": 2}}


def test_fp16_resume_is_exact_with_a_busy_scaler(tmp_path):
    report = verify_resume(_resume_args(tmp_path, **BUSY_SCALER), stop_at=8, task="demo", workdir=tmp_path)
    assert report.identical, str(report)


def test_the_busy_scaler_skips_steps_before_and_after_the_stop(tmp_path):
    trainer = demo_trainer(_resume_args(tmp_path, **BUSY_SCALER, logging_steps=1))
    trainer.train()
    skipped = [entry["step"] for entry in trainer.state.log_history if entry.get("skipped_steps")]
    assert min(skipped) <= 8 < max(skipped), skipped
    assert trainer.precision.overflow_steps == len(skipped)


def test_a_resume_without_the_scaler_state_is_not_exact(tmp_path, monkeypatch):
    """The control: the exactness above really depends on the restored scaler state."""
    monkeypatch.setattr(Fp16MixedPrecision, "load_state_dict", lambda self, state: None)
    report = verify_resume(_resume_args(tmp_path, **BUSY_SCALER), stop_at=8, task="demo", workdir=tmp_path)
    assert not report.identical
    assert report.step == 9, str(report)


class OutOfMemoryAbove:
    """Raises an out-of-memory error in a training forward whose batch is larger than ``limit``,
    from step ``at`` on (so the first attempt has already moved the loss scale)."""

    def __init__(self, limit: int, at: int) -> None:
        self.limit, self.at, self.step = limit, at, 0

    @hookimpl
    def treadle_on_step_begin(self, trainer, state) -> None:
        self.step = state.global_step + 1
        if not hasattr(self, "hooked"):
            self.hooked = trainer.model.register_forward_pre_hook(self._check, with_kwargs=True)
        self.attempts = getattr(self, "attempts", 0) + (state.global_step == 0)

    def _check(self, module, args, kwargs):
        if module.training and self.step >= self.at and kwargs["pixel_values"].shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")


def test_a_batch_size_retry_starts_from_the_first_loss_scale(tmp_path):
    common = dict(fp16=True, max_steps=4, logging_steps=4)
    memory = OutOfMemoryAbove(limit=16, at=2)
    retried = demo_trainer(make_args(tmp_path / "a", auto_find_batch_size=True, per_device_train_batch_size=32, **common),
                           callbacks=[DisturbStep(at=1, factor=1e6), memory])
    retried.train()
    assert memory.attempts == 2 and retried._train_batch_size == 16  # the first attempt overflowed at step 1, then ran out of memory
    direct = demo_trainer(make_args(tmp_path / "b", per_device_train_batch_size=16, **common),
                          callbacks=[DisturbStep(at=1, factor=1e6)])
    direct.train()
    assert retried.precision.scaler.get_scale() == direct.precision.scaler.get_scale() == 32768.0
    assert retried.precision.overflow_steps == direct.precision.overflow_steps == 1
