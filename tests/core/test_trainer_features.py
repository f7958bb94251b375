"""The Trainer's optional features: NaN/Inf policy, memory helpers, compile, NEFTune, tokens, resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset
from trainer_kit import (
    CLASSES,
    Classifier,
    CountingBackend,
    CountingDataset,
    DropoutClassifier,
    Recorder,
    identical_weights,
    make_args,
    make_data,
    same_weights,
    weights,
)
from treadle.checkpoint import verify_checkpoint
from treadle.data import DataCollatorWithPadding, LengthGroupedSampler
from treadle.errors import TreadleError, UsageError
from treadle.markers import hookimpl
from treadle.trainer import Trainer

# --------------------------------------------------------------------------------------------
# NaN / Inf policy
# --------------------------------------------------------------------------------------------


class _NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class Faulty(Classifier):
    """Goes wrong on training forward number ``at``: a NaN loss value, a NaN gradient, or both."""

    def __init__(self, at: int, how: str) -> None:
        super().__init__()
        self.at, self.how, self.calls = at, how, 0

    def forward(self, x, labels=None):
        logits = self.logits(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at and self.how in ("gradient", "both"):
                logits = _NanGradient.apply(logits)
        loss = F.cross_entropy(logits, labels)
        if self.training and self.calls == self.at and self.how in ("value", "both"):
            loss = loss + float("nan") * loss.detach()  # the value is NaN, the gradient is not touched
        return {"loss": loss, "logits": logits}


class WeightsPerStep:
    def __init__(self) -> None:
        self.after: list[dict[str, torch.Tensor]] = []

    @hookimpl
    def treadle_on_step_end(self, trainer):
        self.after.append(weights(trainer.model))


def test_warn_keeps_training_and_reports_the_non_finite_loss(tmp_path, caplog):
    args = make_args(tmp_path, max_steps=8, logging_strategy="steps", logging_steps=4, nan_inf_policy="warn")
    trainer = Trainer(Faulty(at=3, how="value"), args, train_dataset=make_data(64))
    with caplog.at_level("WARNING", logger="treadle"):
        trainer.train()
    first, second = [h for h in trainer.state.log_history if "loss" in h]
    assert first["non_finite_losses"] == 1 and math.isfinite(first["loss"])  # filtered mean, count shown
    assert "non_finite_losses" not in second
    assert any("NaN or Inf" in r.getMessage() for r in caplog.records)


def test_without_the_filter_the_logged_loss_is_nan(tmp_path):
    args = make_args(tmp_path, max_steps=4, logging_strategy="steps", logging_steps=4, logging_nan_inf_filter=False)
    trainer = Trainer(Faulty(at=2, how="value"), args, train_dataset=make_data(64))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h][0]
    assert math.isnan(logged["loss"]) and logged["non_finite_losses"] == 1


@pytest.mark.parametrize(("how", "max_grad_norm"), [("both", 1.0), ("gradient", 0.0)])
def test_skip_step_drops_the_optimizer_step_and_counts_it(tmp_path, how, max_grad_norm):
    probe = WeightsPerStep()
    args = make_args(tmp_path, max_steps=5, logging_strategy="steps", logging_steps=5, nan_inf_policy="skip_step",
                     max_grad_norm=max_grad_norm)
    trainer = Trainer(Faulty(at=3, how=how), args, train_dataset=make_data(64), callbacks=[probe])
    out = trainer.train()
    assert trainer.state.global_step == 5
    assert identical_weights(probe.after[1], probe.after[2])  # step 3 changed nothing
    assert not identical_weights(probe.after[2], probe.after[3])
    assert all(torch.isfinite(v).all() for v in weights(trainer.model).values())
    assert [h.get("skipped_steps") for h in trainer.state.log_history if "loss" in h] == [1]
    assert out.metrics["train_skipped_steps"] == 1


def test_halt_stops_with_a_clear_error_and_leaves_only_sound_checkpoints(tmp_path):
    args = make_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=1, nan_inf_policy="halt")
    trainer = Trainer(Faulty(at=3, how="gradient"), args, train_dataset=make_data(64))
    with pytest.raises(TreadleError, match="halted at step 3") as raised:
        trainer.train()
    assert not isinstance(raised.value, UsageError)
    checkpoints = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    for name in checkpoints:
        verify_checkpoint(tmp_path / "out" / name)
    assert all(torch.isfinite(v).all() for v in weights(trainer.model).values())


# --------------------------------------------------------------------------------------------
# Memory and speed helpers
# --------------------------------------------------------------------------------------------


def test_torch_empty_cache_steps_empties_the_backend_cache(tmp_path):
    CountingBackend.empty_cache_calls = 0
    args = make_args(tmp_path, backend="trainer_kit:CountingBackend", torch_empty_cache_steps=3, max_steps=7)
    Trainer(Classifier(), args, train_dataset=make_data(64)).train()
    assert CountingBackend.empty_cache_calls == 2


class NeedsSmallBatches(Classifier):
    def forward(self, x, labels=None):
        if x.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(x, labels)


def test_auto_find_batch_size_halves_the_batch_until_it_fits(tmp_path):
    args = make_args(tmp_path, per_device_train_batch_size=16, auto_find_batch_size=True)
    trainer = Trainer(NeedsSmallBatches(), args, train_dataset=make_data(32))
    trainer.train()
    assert trainer.state.train_batch_size == 4
    assert trainer.state.global_step == 8
    with pytest.raises(torch.OutOfMemoryError):
        Trainer(NeedsSmallBatches(), make_args(tmp_path, per_device_train_batch_size=16), train_dataset=make_data(32)).train()


class Checkpointable(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.checkpointing = None

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.checkpointing = gradient_checkpointing_kwargs or {}

    def logits(self, x):
        if self.checkpointing is not None and self.training:
            hidden = torch.utils.checkpoint.checkpoint(lambda t: torch.relu(self.hidden(t)), x, use_reentrant=False)
            return self.out(self.norm(hidden))
        return super().logits(x)


def test_gradient_checkpointing_is_enabled_on_models_that_support_it(tmp_path):
    plain = Trainer(Checkpointable(), make_args(tmp_path, max_steps=4), train_dataset=make_data(64))
    plain.train()
    args = make_args(tmp_path, max_steps=4, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = Trainer(Checkpointable(), args, train_dataset=make_data(64))
    checkpointed.train()
    assert plain.model.checkpointing is None
    assert checkpointed.model.checkpointing == {"use_reentrant": False}
    assert same_weights(weights(plain.model), weights(checkpointed.model), atol=1e-6)
    with pytest.raises(UsageError, match="gradient_checkpointing"):
        Trainer(Classifier(), make_args(tmp_path, gradient_checkpointing=True), train_dataset=make_data(16)).train()


def test_torch_compile_wraps_the_model_and_keeps_the_weights_names(tmp_path):
    args = make_args(tmp_path, max_steps=3, torch_compile=True, torch_compile_backend="eager")
    compiled = Trainer(Classifier(), args, train_dataset=make_data(64))
    compiled.train()
    assert hasattr(compiled.model_wrapped, "_orig_mod") and isinstance(compiled.model, Classifier)
    eager = Trainer(Classifier(), make_args(tmp_path, max_steps=3), train_dataset=make_data(64))
    eager.train()
    assert same_weights(weights(compiled.model), weights(eager.model), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Token models: NEFTune, tokens seen, grouping by length
# --------------------------------------------------------------------------------------------


class Bag(nn.Module):
    """Averages token embeddings; padding is masked out by ``attention_mask``."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.embed = nn.Embedding(20, 8)
            self.head = nn.Linear(8, CLASSES)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None, labels=None):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pooled = (self.embed(input_ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        logits = self.head(pooled)
        return {"logits": logits} if labels is None else {"loss": F.cross_entropy(logits, labels), "logits": logits}


def token_rows(n: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(4)
    rows = []
    for i in range(n):
        length = int(torch.randint(2, 9, (1,), generator=g))
        ids = torch.randint(1, 20, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": sum(ids) % CLASSES})
    return rows


def padded_tokens(n: int = 32) -> TensorDataset:
    rows = token_rows(n)
    batch = DataCollatorWithPadding()(rows)
    return TensorDataset(batch["input_ids"], batch["attention_mask"], batch["labels"])


def test_neftune_adds_noise_to_embeddings_in_training_only(tmp_path):
    data = padded_tokens()
    plain = Trainer(Bag(), make_args(tmp_path, max_steps=4), train_dataset=data)
    plain.train()
    noisy = Trainer(Bag(), make_args(tmp_path, max_steps=4, neftune_noise_alpha=5.0), train_dataset=data)
    noisy.train()
    assert not same_weights(weights(plain.model), weights(noisy.model), atol=1e-6)
    assert not noisy.model.embed._forward_hooks  # removed when training ends
    first, second = noisy.predict(data).predictions, noisy.predict(data).predictions
    assert (first == second).all()
    with pytest.raises(UsageError, match="get_input_embeddings"):
        Trainer(Classifier(), make_args(tmp_path, neftune_noise_alpha=5.0), train_dataset=make_data(16)).train()


@pytest.mark.parametrize("mode", ["all", "non_padding"])
def test_include_num_input_tokens_seen_counts_the_inputs(tmp_path, mode):
    data = padded_tokens(32)
    args = make_args(tmp_path, num_train_epochs=1, include_num_input_tokens_seen=mode, logging_strategy="steps", logging_steps=2)
    trainer = Trainer(Bag(), args, train_dataset=data)
    trainer.train()
    ids, mask, _ = data.tensors
    expected = ids.numel() if mode == "all" else int(mask.sum())
    assert trainer.state.num_input_tokens_seen == expected
    assert trainer.state.log_history[-1]["num_input_tokens_seen"] == expected
    assert [h["num_input_tokens_seen"] for h in trainer.state.log_history if "loss" in h][0] < expected


def test_group_by_length_batches_samples_of_similar_length(tmp_path):
    rows = token_rows(64)
    args = make_args(tmp_path, group_by_length=True, per_device_train_batch_size=4, num_train_epochs=1)
    trainer = Trainer(Bag(), args, train_dataset=rows, data_collator=DataCollatorWithPadding())
    loader = trainer.get_train_dataloader()
    assert isinstance(loader.sampler, LengthGroupedSampler)
    order = list(loader.sampler)
    lengths = [len(rows[i]["input_ids"]) for i in order]
    assert lengths == sorted(lengths, reverse=True)  # 64 samples fit in one mega-batch
    trainer.train()
    assert trainer.state.global_step == 16


# --------------------------------------------------------------------------------------------
# Resuming: the position comes from global_step, skipped batches are not read
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_at", "accumulation", "workers"),
    [(4, 1, 0), (8, 1, 0), (3, 2, 2)],
    ids=["mid-epoch", "epoch-boundary", "accumulation-and-workers"],
)
def test_resuming_reproduces_the_uninterrupted_run_without_rereading_data(tmp_path, stop_at, accumulation, workers):
    common = {"max_steps": 10, "gradient_accumulation_steps": accumulation, "dataloader_num_workers": workers,
              "save_strategy": "steps", "save_steps": stop_at}
    straight = Trainer(DropoutClassifier(), make_args(tmp_path / "a", **common), train_dataset=make_data(64))
    straight.train()

    first = Trainer(DropoutClassifier(), make_args(tmp_path / "b", **{**common, "max_steps": stop_at}), train_dataset=make_data(64))
    first.train()
    data = CountingDataset(make_data(64))
    resumed = Trainer(DropoutClassifier(), make_args(tmp_path / "b", **common), train_dataset=data)
    recorder = Recorder()
    resumed.add_callback(recorder)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "out" / f"checkpoint-{stop_at}"))

    assert identical_weights(weights(straight.model), weights(resumed.model))
    if workers == 0:  # reads in worker processes are not counted here
        assert data.reads == (10 - stop_at) * accumulation * 8
    assert recorder.events[0] == ("train_begin", stop_at)
