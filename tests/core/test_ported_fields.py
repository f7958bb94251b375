"""Seed fields that did nothing: memory metrics, past_index, debug underflow_overflow, jit_mode_eval,
use_liger_kernel, and token averaging with one micro-batch per step."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from trainer_kit import Classifier, make_args, make_data
from treadle import Trainer, hookimpl
from treadle.components import Backend
from treadle.errors import TreadleError, UsageError
from treadle.plugins import TreadlePluginManager, get_plugin_manager, reset_plugin_manager

# ------------------------------------------------------------------ memory metrics


class MeteredBackend(Backend):
    """The CPU, with "device memory" = the bytes of every live tensor (counted, not made up)."""

    name = "metered"

    @classmethod
    def is_available(cls) -> bool:
        return True

    def setup_device(self, local_rank: int) -> torch.device:
        return torch.device("cpu")

    def memory_stats(self) -> dict[str, int]:
        live = sum(o.untyped_storage().nbytes() for o in gc.get_objects() if isinstance(o, torch.Tensor))
        return {"allocated": live, "peak": live}


class Ballast:
    """Holds 64 MiB for the duration of one step: the peak must show it, the end of training not."""

    @hookimpl
    def treadle_on_step_begin(self, state):
        if state.global_step == 1:
            self.block = bytearray(64 << 20)
            self.block[:: 4096] = b"x" * len(self.block[:: 4096])  # touch every page: resident, not just reserved

    @hookimpl
    def treadle_on_step_end(self, state):
        self.__dict__.pop("block", None)


def test_memory_metrics_for_init_train_eval_and_test(tmp_path):
    args = make_args(tmp_path, skip_memory_metrics=False, max_steps=4, optim="adamw_torch", per_device_train_batch_size=16)
    trainer = Trainer(Classifier(hidden=256), args, train_dataset=make_data(64), eval_dataset=make_data(32), callbacks=[Ballast()])
    first = trainer.train().metrics
    for stage in ("init", "train"):
        assert {f"{stage}_mem_cpu_alloc_delta", f"{stage}_mem_cpu_peaked_delta"} <= set(first)
    assert "train_mem_gpu_alloc_delta" not in first  # the cpu backend has no device memory of its own
    again = trainer.train().metrics  # torch's lazy set-up is done: what is left is the ballast's peak
    assert "init_mem_cpu_alloc_delta" not in again  # init is reported once
    assert again["train_mem_cpu_peaked_delta"] >= 60 << 20 and again["train_mem_cpu_alloc_delta"] < 16 << 20
    assert {"eval_mem_cpu_alloc_delta", "eval_mem_cpu_peaked_delta"} <= set(trainer.evaluate())
    assert "test_mem_cpu_alloc_delta" in trainer.predict(make_data(16)).metrics


def test_device_memory_comes_from_the_backend(tmp_path):
    args = make_args(tmp_path, skip_memory_metrics=False, max_steps=2, optim="adamw_torch",
                     backend="test_ported_fields:MeteredBackend")
    model = Classifier(hidden=256)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    metrics = Trainer(model, args, train_dataset=make_data(64)).train().metrics
    assert metrics["train_mem_gpu_alloc_delta"] >= 2 * parameter_bytes  # AdamW's two moments per parameter
    assert metrics["train_mem_gpu_peaked_delta"] >= metrics["train_mem_gpu_alloc_delta"]


def test_no_memory_metrics_by_default(tmp_path):
    metrics = Trainer(Classifier(), make_args(tmp_path, max_steps=2), train_dataset=make_data(32)).train().metrics
    assert not [key for key in metrics if "_mem_" in key]


# ------------------------------------------------------------------ past_index


class Recurrent(nn.Module):
    """Returns (loss, logits, mems); records the mems each call received (None or the last output)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)
        self.received: list = []

    def forward(self, x, labels=None, mems=None):
        self.received.append(None if mems is None else mems.clone())
        logits = self.linear(x)
        new_mems = torch.full((1,), float(len(self.received)))  # which call made it
        loss = F.cross_entropy(logits, labels) if labels is not None else logits.sum() * 0
        return loss, logits, new_mems


def test_past_index_feeds_the_kept_output_back_as_mems(tmp_path):
    model = Recurrent()
    args = make_args(tmp_path, past_index=2, max_steps=3, per_device_train_batch_size=16, num_train_epochs=1)
    Trainer(model, args, train_dataset=make_data(64)).train()
    assert model.received[0] is None
    assert [float(m) for m in model.received[1:3]] == [1.0, 2.0]  # each step gets the previous step's output


def test_without_past_index_no_mems_are_passed(tmp_path):
    model = Recurrent()
    Trainer(model, make_args(tmp_path, max_steps=2), train_dataset=make_data(32)).train()
    assert all(m is None for m in model.received)


def test_a_past_index_beyond_the_outputs_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="--past_index 5: the model's output"):
        Trainer(Recurrent(), make_args(tmp_path, past_index=5, max_steps=1), train_dataset=make_data(16)).train()


# ------------------------------------------------------------------ debug underflow_overflow


class Blows(nn.Module):
    """Multiplies by a huge factor: finite for small inputs, inf once the weights grow."""

    def forward(self, x):
        return x * 1e30


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 4)
        self.amplify = Blows()
        self.out = nn.Linear(4, 3)

    def forward(self, x, labels=None):
        logits = self.out(self.amplify(self.amplify(self.first(x))))
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def test_debug_underflow_overflow_names_the_first_module_making_inf(tmp_path):
    args = make_args(tmp_path, debug="underflow_overflow", max_steps=2)
    with pytest.raises(TreadleError) as err:
        Trainer(Exploding(), args, train_dataset=make_data(32)).train()
    message = str(err.value)
    assert "inf/nan in output of module 'amplify Blows' at batch 0 (its inputs were finite: it produced them)" in message
    assert "first Linear" in message and "weight" in message  # the frames before it


def test_debug_underflow_overflow_lets_a_healthy_model_train(tmp_path):
    output = Trainer(Classifier(), make_args(tmp_path, debug="underflow_overflow", max_steps=3), train_dataset=make_data(32)).train()
    assert output.global_step == 3


# ------------------------------------------------------------------ jit_mode_eval


class CountingClassifier(Classifier):
    calls = 0

    def forward(self, x, labels=None):
        type(self).calls += 1  # Python runs this only when the module is not traced
        return super().forward(x, labels)


def test_jit_mode_eval_evaluates_a_traced_model(tmp_path):
    model = CountingClassifier()
    eager = Trainer(model, make_args(tmp_path, per_device_eval_batch_size=8)).evaluate(make_data(64))
    CountingClassifier.calls = 0
    traced = Trainer(model, make_args(tmp_path, per_device_eval_batch_size=8, jit_mode_eval=True)).evaluate(make_data(64))
    assert CountingClassifier.calls < 8  # 8 batches; the traced graph ran them, Python forward only traced
    assert traced["eval_loss"] == pytest.approx(eager["eval_loss"], rel=1e-5)


class Untraceable(Classifier):
    def forward(self, x, labels=None):
        if x.sum() > 1e9:  # data-dependent Python control flow: no trace
            raise RuntimeError("unreachable")
        return {"loss": F.cross_entropy(self.logits(x), labels), "logits": self.logits(x), "meta": "not a tensor"}


def test_jit_mode_eval_falls_back_with_a_warning(tmp_path, caplog):
    metrics = Trainer(Untraceable(), make_args(tmp_path, jit_mode_eval=True)).evaluate(make_data(16))
    assert metrics["eval_loss"] > 0 and "--jit_mode_eval: the model could not be traced" in caplog.text


# ------------------------------------------------------------------ use_liger_kernel

APPLIED: list = []


def fake_liger(model, **config):
    """A kernel set that swaps every LayerNorm for an RMSNorm, as Liger's rms_norm option does."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.LayerNorm):
            setattr(model, name, nn.RMSNorm(child.normalized_shape))
    APPLIED.append((type(model).__name__, config))


class KernelPlugin:
    @hookimpl
    def treadle_register_kernels(self, register):
        register("liger", "test_ported_fields:fake_liger", description="stand-in kernel set for the test")


@pytest.fixture
def kernel_plugin():
    pm = TreadlePluginManager(autoload=False)
    pm.register_module(KernelPlugin(), "kernels")
    previous = get_plugin_manager()
    reset_plugin_manager(pm)
    APPLIED.clear()
    yield pm
    reset_plugin_manager(previous)


def test_use_liger_kernel_applies_the_kernel_plugin(kernel_plugin, tmp_path):
    args = make_args(tmp_path, use_liger_kernel=True, liger_kernel_config={"rms_norm": True}, max_steps=2)
    trainer = Trainer(Classifier(), args, train_dataset=make_data(32))
    assert APPLIED == [("Classifier", {"rms_norm": True})] and isinstance(trainer.model.norm, nn.RMSNorm)
    assert trainer.train().global_step == 2


def test_use_liger_kernel_without_a_kernel_plugin_names_what_to_install(tmp_path):
    with pytest.raises(UsageError) as err:  # found with the other argument problems, before anything is built
        Trainer(Classifier(), make_args(tmp_path, use_liger_kernel=True))
    message = str(err.value)
    assert "--use_liger_kernel: no installed plugin provides kernel 'liger'" in message
    assert "pip install liger-kernel" in message and "treadle_register_kernels" in message
