"""The training loop's semantics: model shapes, step counts, accumulation, schedules, strategies."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset
from trainer_kit import (
    CLASSES,
    IN,
    Classifier,
    Recorder,
    dict_rows,
    make_args,
    make_data,
    same_weights,
    weights,
)
from treadle.errors import UsageError
from treadle.markers import hookimpl
from treadle.trainer import Trainer

# --------------------------------------------------------------------------------------------
# Models of every output shape
# --------------------------------------------------------------------------------------------


class TensorLoss(Classifier):
    def forward(self, x, labels):
        return F.cross_entropy(self.logits(x), labels)


class TupleOutputs(Classifier):
    def forward(self, x, labels=None):
        logits = self.logits(x)
        return (logits,) if labels is None else (F.cross_entropy(logits, labels), logits)


class ObjectOutputs(Classifier):
    def forward(self, x, labels=None):
        logits = self.logits(x)
        return SimpleNamespace(loss=None if labels is None else F.cross_entropy(logits, labels), logits=logits)


@pytest.mark.parametrize("model_cls", [Classifier, TensorLoss, TupleOutputs, ObjectOutputs])
def test_a_loss_tensor_a_dict_an_object_or_a_tuple_all_train(tmp_path, model_cls):
    data = make_data(96)
    trainer = Trainer(model_cls(), make_args(tmp_path, num_train_epochs=4), train_dataset=data, eval_dataset=data)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < 0.8 * before


def test_training_returns_the_seeds_metrics(tmp_path):
    data = make_data(64)
    trainer = Trainer(Classifier(), make_args(tmp_path, num_train_epochs=2), train_dataset=data)
    out = trainer.train()
    assert out.global_step == trainer.state.global_step == 16
    for key in ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss", "epoch"):
        assert key in out.metrics, key
    assert out.metrics["epoch"] == 2.0
    assert out.training_loss == out.metrics["train_loss"] and math.isfinite(out.training_loss)
    assert trainer.state.log_history[-1]["train_loss"] == out.training_loss


def test_a_model_that_returns_no_loss_is_a_usage_error(tmp_path):
    class LogitsOnly(Classifier):
        def forward(self, x, labels=None):
            return {"logits": self.logits(x)}

    trainer = Trainer(LogitsOnly(), make_args(tmp_path), train_dataset=make_data(16))
    with pytest.raises(UsageError, match="returned no loss"):
        trainer.train()


def test_a_loss_that_is_not_a_single_number_is_a_usage_error(tmp_path):
    class PerSample(Classifier):
        def forward(self, x, labels):
            return F.cross_entropy(self.logits(x), labels, reduction="none")

    trainer = Trainer(PerSample(), make_args(tmp_path), train_dataset=make_data(16))
    with pytest.raises(UsageError, match="shape"):
        trainer.train()


def test_labels_are_found_by_label_names(tmp_path):
    class Targets(Classifier):
        def forward(self, x, target=None):
            logits = self.logits(x)
            return {"logits": logits} if target is None else {"loss": F.cross_entropy(logits, target), "logits": logits}

    data = make_data(32)
    rows = [{"x": x, "target": int(y)} for x, y in zip(*data.tensors)]
    guessed = Trainer(Targets(), make_args(tmp_path), eval_dataset=rows).predict(rows)
    assert guessed.label_ids is None  # no forward parameter contains "label"
    named = Trainer(Targets(), make_args(tmp_path, label_names=["target"]), train_dataset=rows)
    named.train()
    out = named.predict(rows)
    assert (out.label_ids == data.tensors[1].numpy()).all()
    assert out.predictions.shape == (32, CLASSES) and "test_loss" in out.metrics


def test_remove_unused_columns_drops_keys_forward_does_not_take(tmp_path):
    rows = dict_rows(make_data(32), note="a string", idx=7)
    Trainer(Classifier(), make_args(tmp_path), train_dataset=rows).train()
    kept = Trainer(Classifier(), make_args(tmp_path, remove_unused_columns=False), train_dataset=rows)
    with pytest.raises(TypeError, match="note|idx"):
        kept.train()


# --------------------------------------------------------------------------------------------
# How long training runs
# --------------------------------------------------------------------------------------------


def test_fractional_epochs_run_that_share_of_the_last_epoch(tmp_path):
    recorder = Recorder()
    trainer = Trainer(Classifier(), make_args(tmp_path, num_train_epochs=2.5), train_dataset=make_data(64), callbacks=[recorder])
    trainer.train()
    assert trainer.state.global_step == 20  # 8 steps per epoch
    assert trainer.state.epoch == 2.5
    assert recorder.names().count("epoch_begin") == 3


def test_max_steps_overrides_the_number_of_epochs(tmp_path):
    trainer = Trainer(Classifier(), make_args(tmp_path, num_train_epochs=1, max_steps=11), train_dataset=make_data(64))
    trainer.train()
    assert trainer.state.global_step == 11
    assert trainer.state.epoch == pytest.approx(1 + 3 / 8)


def test_the_last_partial_accumulation_of_an_epoch_is_a_step(tmp_path):
    # 9 micro-batches of 8 with 4 per step: 2 full steps and one of a single micro-batch.
    trainer = Trainer(Classifier(), make_args(tmp_path, gradient_accumulation_steps=4), train_dataset=make_data(72))
    trainer.train()
    assert trainer.state.global_step == 3


# --------------------------------------------------------------------------------------------
# Gradient accumulation is exact
# --------------------------------------------------------------------------------------------


def _final_weights(tmp_path, model, data, **overrides):
    trainer = Trainer(model, make_args(tmp_path, **overrides), train_dataset=data)
    trainer.train()
    return weights(trainer.model)


def test_accumulating_4_batches_of_8_equals_one_batch_of_32(tmp_path):
    # 36 samples: the second step of each epoch holds 4 samples in both set-ups, so averaging
    # the micro-batch losses by the number of micro-batches (instead of by samples) would differ.
    data = make_data(36)
    common = {"num_train_epochs": 3, "learning_rate": 0.2, "max_grad_norm": 1.0}
    big = _final_weights(tmp_path, Classifier(), data, per_device_train_batch_size=32, **common)
    accumulated = _final_weights(tmp_path, Classifier(), data, per_device_train_batch_size=8, gradient_accumulation_steps=4, **common)
    assert same_weights(big, accumulated, atol=1e-6)
    single = _final_weights(tmp_path, Classifier(), data, per_device_train_batch_size=8, **common)
    assert not same_weights(big, single, atol=1e-4)


class TokenModel(nn.Module):
    """A per-token classifier whose mean loss ignores positions labelled -100."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.embed = nn.Embedding(12, 8)
            self.head = nn.Linear(8, 12)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.embed(input_ids))
        if labels is None:
            return {"logits": logits}
        return {"loss": F.cross_entropy(logits.reshape(-1, 12), labels.reshape(-1), ignore_index=-100), "logits": logits}


def token_data(n: int = 32, width: int = 6) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 12, (n, width), generator=g)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    labels = torch.where(torch.arange(width)[None, :] < lengths[:, None], (ids + 1) % 12, torch.tensor(-100))
    return TensorDataset(ids, labels)


def test_accumulation_weights_micro_batches_by_their_label_tokens(tmp_path):
    data = token_data()
    common = {"num_train_epochs": 2, "learning_rate": 0.5, "max_grad_norm": 0}
    big = _final_weights(tmp_path, TokenModel(), data, per_device_train_batch_size=16, **common)
    accumulated = _final_weights(tmp_path, TokenModel(), data, per_device_train_batch_size=4, gradient_accumulation_steps=4, **common)
    assert same_weights(big, accumulated, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Clipping, schedules, smoothing
# --------------------------------------------------------------------------------------------


class GradNormProbe:
    def __init__(self) -> None:
        self.norms: list[float] = []

    @hookimpl
    def treadle_on_pre_optimizer_step(self, trainer):
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.nn.utils.get_total_norm(grads)))


@pytest.mark.parametrize("max_grad_norm", [0.01, 0.0])
def test_max_grad_norm_clips_the_gradient_before_the_optimizer_sees_it(tmp_path, max_grad_norm):
    probe = GradNormProbe()
    args = make_args(tmp_path, max_grad_norm=max_grad_norm, max_steps=5)
    Trainer(Classifier(), args, train_dataset=make_data(64), callbacks=[probe]).train()
    if max_grad_norm:
        assert max(probe.norms) <= max_grad_norm * (1 + 1e-4)
    else:
        assert max(probe.norms) > 0.05


@pytest.mark.parametrize("warmup", [{"warmup_steps": 4}, {"warmup_ratio": 0.5}])
def test_linear_warmup_then_decay(tmp_path, warmup):
    args = make_args(
        tmp_path, lr_scheduler_type="linear", learning_rate=0.1, max_steps=8, logging_strategy="steps", logging_steps=1, **warmup
    )
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64))
    trainer.train()
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "loss" in h]
    # each log shows the rate its step used (transformers 5): warmup starts at 0, decay ends above 0
    assert lrs == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.075, 0.05, 0.025])
    assert trainer.get_learning_rates()[0] == pytest.approx(0.0)


def test_lr_scheduler_kwargs_reach_the_scheduler(tmp_path):
    args = make_args(
        tmp_path, lr_scheduler_type="cosine_with_min_lr", learning_rate=0.1, max_steps=4,
        lr_scheduler_kwargs={"min_lr": 0.04}, logging_strategy="steps", logging_steps=1,
    )
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64))
    trainer.train()
    assert trainer.get_learning_rates()[0] == pytest.approx(0.04)  # where the schedule ends, after the last step


def test_reduce_lr_on_plateau_is_stepped_with_the_evaluation_metric(tmp_path):
    # A learning rate too small to move the weights: eval_loss stays flat, so every evaluation
    # after the first is a plateau and halves the rate.
    args = make_args(
        tmp_path, lr_scheduler_type="reduce_lr_on_plateau", learning_rate=1e-6, max_steps=6,
        eval_strategy="steps", eval_steps=1, lr_scheduler_kwargs={"patience": 0, "factor": 0.5},
    )
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64), eval_dataset=make_data(16))
    trainer.train()
    assert trainer.get_learning_rates()[0] == pytest.approx(1e-6 * 0.5**5)


def test_label_smoothing_mixes_the_targets_with_the_uniform_distribution(tmp_path):
    data = make_data(8)
    x, y = data.tensors
    trainer = Trainer(Classifier(), make_args(tmp_path, label_smoothing_factor=0.2), train_dataset=data)
    loss = trainer.compute_loss(trainer.model, {"x": x, "labels": y})
    logits = trainer.model.logits(x)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.2).item(), rel=1e-6)
    assert loss.item() != pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-3)


# --------------------------------------------------------------------------------------------
# Logging, evaluation and saving strategies
# --------------------------------------------------------------------------------------------


def _steps_with(history, key):
    return [h["step"] for h in history if key in h]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"logging_strategy": "steps", "logging_steps": 3, "max_steps": 8}, [3, 6]),
        ({"logging_strategy": "steps", "logging_steps": 3, "max_steps": 8, "logging_first_step": True}, [1, 3, 6]),
        ({"logging_strategy": "steps", "logging_steps": 0.25, "max_steps": 8}, [2, 4, 6, 8]),
        ({"logging_strategy": "epoch", "num_train_epochs": 2}, [8, 16]),
        ({"logging_strategy": "no", "num_train_epochs": 2}, []),
    ],
)
def test_logging_strategies(tmp_path, settings, expected):
    trainer = Trainer(Classifier(), make_args(tmp_path, **settings), train_dataset=make_data(64))
    trainer.train()
    assert _steps_with(trainer.state.log_history, "loss") == expected


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"eval_strategy": "steps", "eval_steps": 4, "max_steps": 12}, [4, 8, 12]),
        ({"eval_strategy": "steps", "eval_steps": 4, "max_steps": 12, "eval_delay": 5}, [8, 12]),
        ({"eval_strategy": "epoch", "num_train_epochs": 2}, [8, 16]),
        ({"eval_strategy": "epoch", "num_train_epochs": 2, "eval_delay": 1.5}, [16]),
        ({"eval_strategy": "no", "eval_on_start": True, "max_steps": 4}, [0]),
    ],
)
def test_evaluation_strategies(tmp_path, settings, expected):
    data = make_data(64)
    trainer = Trainer(Classifier(), make_args(tmp_path, **settings), train_dataset=data, eval_dataset=make_data(16, seed=1))
    trainer.train()
    assert _steps_with(trainer.state.log_history, "eval_loss") == expected


def _checkpoint_steps(tmp_path):
    return sorted(int(p.name.split("-")[1]) for p in (tmp_path / "out").glob("checkpoint-*"))


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"save_strategy": "steps", "save_steps": 3, "max_steps": 8}, [3, 6, 8]),
        ({"save_strategy": "epoch", "num_train_epochs": 2}, [8, 16]),
        ({"save_strategy": "no", "num_train_epochs": 1}, []),
    ],
)
def test_save_strategies(tmp_path, settings, expected):
    recorder = Recorder()
    trainer = Trainer(Classifier(), make_args(tmp_path, **settings), train_dataset=make_data(64), callbacks=[recorder])
    trainer.train()
    assert _checkpoint_steps(tmp_path) == expected
    assert [step for name, step in recorder.events if name == "save"] == expected


def test_save_strategy_best_saves_only_when_the_metric_improves(tmp_path):
    args = make_args(
        tmp_path, save_strategy="best", eval_strategy="steps", eval_steps=1, max_steps=10, learning_rate=0.5,
        metric_for_best_model="loss", optim="sgd",
    )
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64), eval_dataset=make_data(16, seed=3))
    trainer.train()
    evals = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    best, improving = math.inf, []
    for step, loss in evals:
        if loss < best:
            best, improving = loss, improving + [step]
    assert 0 < len(improving) < len(evals)  # the run must both improve and not improve
    assert _checkpoint_steps(tmp_path) == improving
    assert trainer.state.best_metric == pytest.approx(best)


# --------------------------------------------------------------------------------------------
# Randomness
# --------------------------------------------------------------------------------------------


class Dropped(nn.Module):
    """Initialised from the global RNG and uses dropout: seeds matter for both."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(IN, 16), nn.Dropout(0.3), nn.Linear(16, CLASSES))

    def forward(self, x, labels):
        return F.cross_entropy(self.net(x), labels)


def _trained(tmp_path, **overrides):
    trainer = Trainer(model_init=Dropped, args=make_args(tmp_path, max_steps=6, **overrides), train_dataset=make_data(64))
    trainer.train()
    return weights(trainer.model)


def test_the_same_seed_gives_the_same_run_and_another_seed_another(tmp_path):
    assert same_weights(_trained(tmp_path, seed=1), _trained(tmp_path, seed=1), rtol=0, atol=0)
    assert not same_weights(_trained(tmp_path, seed=1), _trained(tmp_path, seed=2))


def _first_epoch_order(tmp_path, **overrides):
    from treadle.data import epoch_iterator

    trainer = Trainer(Classifier(), make_args(tmp_path, **overrides), train_dataset=make_data(64))
    return torch.cat([batch[0][:, 0] for batch in epoch_iterator(trainer.get_train_dataloader(), 0)])


def test_data_seed_alone_decides_the_order_of_the_samples(tmp_path):
    order = _first_epoch_order(tmp_path, seed=1, data_seed=5)
    assert torch.equal(order, _first_epoch_order(tmp_path, seed=2, data_seed=5))
    assert not torch.equal(order, _first_epoch_order(tmp_path, seed=1, data_seed=6))
    assert torch.equal(_first_epoch_order(tmp_path, seed=7), _first_epoch_order(tmp_path, seed=7, data_seed=7))


def test_full_determinism_turns_on_deterministic_kernels(tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    try:
        Trainer(Classifier(), make_args(tmp_path, full_determinism=True), train_dataset=make_data(16))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def test_dataloader_workers_do_not_change_the_run(tmp_path):
    in_process = _trained(tmp_path, seed=3)
    with_workers = _trained(tmp_path, seed=3, dataloader_num_workers=2, dataloader_persistent_workers=True, dataloader_prefetch_factor=3)
    assert same_weights(in_process, with_workers, rtol=0, atol=0)


def test_dataloader_arguments_reach_the_dataloader(tmp_path):
    args = make_args(tmp_path, dataloader_num_workers=2, dataloader_persistent_workers=True, dataloader_prefetch_factor=3,
                     dataloader_drop_last=True)
    loader = Trainer(Classifier(), args, train_dataset=make_data(70)).get_train_dataloader()
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor, loader.drop_last) == (2, True, 3, True)
    assert len(loader) == 8  # 70 // 8 with the last partial batch dropped
    assert not loader.pin_memory  # nothing to pin for on a CPU run
