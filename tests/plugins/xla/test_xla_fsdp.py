"""``xla_fsdp``: torch_xla's FSDP from ``fsdp_config``, on one PJRT CPU replica.

One replica holds every shard, so the losses must equal the cpu backend's; the checkpoint
holds the replica's shard plus the consolidated weights, and a resume reads the shard.
"""

from __future__ import annotations

import pytest
import torch
from test_xla_training import logged, make_args, train
from xla_tasks import small_regression

from treadle.trainer import Trainer

pytest.importorskip("torch_xla")
pytestmark = pytest.mark.usefixtures("installed_plugins")

FSDP = dict(
    fsdp="full_shard", fsdp_config={"xla": True, "min_num_params": 100, "xla_fsdp_settings": {"flatten_parameters": True}}
)


@pytest.fixture(autouse=True)
def _pjrt_cpu(monkeypatch):
    monkeypatch.setenv("PJRT_DEVICE", "CPU")


def test_xla_fsdp_trains_like_cpu_and_resumes_from_its_shard(tmp_path):
    options = dict(max_steps=6, per_device_train_batch_size=16, max_grad_norm=1.0)
    sharded = train(small_regression, tmp_path / "fsdp", "xla", save_strategy="steps", save_steps=3, eval_strategy="steps",
                    eval_steps=3, load_best_model_at_end=True, metric_for_best_model="loss", **FSDP, **options)
    assert sharded.strategy.name == "xla_fsdp"
    assert type(sharded.model_wrapped).__name__ == "XlaFullyShardedDataParallel"
    cpu = train(small_regression, tmp_path / "cpu", "cpu", **options)
    torch.testing.assert_close(logged(sharded, "loss"), logged(cpu, "loss"), rtol=1e-3, atol=1e-6)
    # the best checkpoint's shard came back into the wrapper: evaluating now gives its eval loss
    best = min(logged(sharded, "eval_loss"))
    assert sharded.state.best_model_checkpoint is not None
    torch.testing.assert_close(sharded.evaluate()["eval_loss"], best, rtol=1e-5, atol=1e-7)

    checkpoint = tmp_path / "fsdp" / "checkpoint-3"
    assert (checkpoint / "xla_fsdp" / "model-rank00000-of-00001.safetensors").is_file()
    assert (checkpoint / "xla_fsdp" / "shard_metadata.json").is_file()
    from safetensors.torch import load_file

    assert set(load_file(checkpoint / "model.safetensors")) == set(cpu.model.state_dict())

    args = make_args(tmp_path / "fsdp", "xla", **FSDP, **options)
    resumed = Trainer(model=small_regression(args).model, args=args, train_dataset=small_regression(args).train_dataset)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    torch.testing.assert_close(logged(resumed, "loss"), logged(sharded, "loss")[len(logged(resumed, "loss")) * -1:],
                               rtol=1e-5, atol=1e-7)


def test_a_model_wrapped_whole_trains_its_flattened_parameters(tmp_path):
    """No auto-wrap: the root wrapper flattens every parameter out of the user's module, so the
    optimizer must be built on the wrapper's parameters (the user's module has none left)."""
    options = dict(max_steps=4, per_device_train_batch_size=16)
    whole = dict(fsdp="full_shard", fsdp_config={"xla": True, "xla_fsdp_settings": {"flatten_parameters": True}})
    sharded = train(small_regression, tmp_path / "whole", "xla", **whole, **options)
    assert not any(True for _ in sharded.model.parameters())  # flattened into the wrapper
    cpu = train(small_regression, tmp_path / "cpu", "cpu", **options)
    torch.testing.assert_close(logged(sharded, "loss"), logged(cpu, "loss"), rtol=1e-3, atol=1e-6)
