"""The Strategy contract, exercised by the fixture strategies of ``treadle-fixture-strategies``.

``fixture_sharded`` is shaped like FSDP2 (wraps before the optimizer exists, its own checkpoint
files in a subdirectory, steps the scheduler itself, builds the model in its own context);
``fixture_engine`` like DeepSpeed's engine (builds the optimizer, gets the scheduler as a
function, owns backward / clipping / step, writes a file it declares pickled). Each trains the
resume task and resumes to the same bits, through the core's atomic checkpoint and manifest.
"""

from __future__ import annotations

import json

import pytest
import torch
from resume_task import NUM_SAMPLES, Net, Samples, build
from test_checkpoint_resume import make_args

from treadle.checkpoint import pickled_files, verify_checkpoint
from treadle.trainer import Trainer
from treadle.verify_resume import verify_resume

pytestmark = pytest.mark.usefixtures("installed_plugins")


@pytest.fixture
def calls():
    from treadle_fixture_strategies.strategies import calls

    calls.clear()
    return calls


def _train(tmp_path, strategy, **overrides):
    torch.manual_seed(0)
    args = make_args(tmp_path / "out", strategy=strategy, max_steps=8, save_strategy="steps", save_steps=4, **overrides)
    trainer = Trainer(model_init=Net, args=args, train_dataset=Samples(NUM_SAMPLES))
    trainer.train()
    return trainer


def test_sharded_strategy_owns_its_files_scheduler_and_model_context(tmp_path, calls):
    trainer = _train(tmp_path, "fixture_sharded", torch_compile=True)
    checkpoint = tmp_path / "out" / "checkpoint-8"
    manifest = verify_checkpoint(checkpoint)
    assert {"sharded/model-rank0.safetensors", "sharded/optim-rank0.json"} <= set(manifest["files"])
    assert "model.safetensors" not in manifest["files"]  # the strategy chose its own layout
    assert manifest["strategy"] == "fixture_sharded" and not pickled_files(manifest)
    assert calls["fixture_sharded.model_init_context"] >= 1  # model_init ran inside it
    assert calls["fixture_sharded.setup"] == 1 and calls["fixture_sharded.setup_model"] == 1
    assert calls["fixture_sharded.scheduler_step"] == 8  # the strategy stepped it; the loop did not as well
    assert trainer.lr_scheduler.last_epoch == 8
    assert calls["fixture_sharded.compile_model"] == 1  # --torch_compile went through the strategy
    assert calls["fixture_sharded.save_checkpoint"] == 2


def test_a_damaged_strategy_file_is_caught_by_the_manifest(tmp_path, calls):
    from treadle.errors import CheckpointError

    _train(tmp_path, "fixture_sharded")
    shard = tmp_path / "out" / "checkpoint-8" / "sharded" / "model-rank0.safetensors"
    shard.write_bytes(shard.read_bytes()[:-3] + b"xyz")
    with pytest.raises(CheckpointError, match="sharded/model-rank0.safetensors"):
        verify_checkpoint(tmp_path / "out" / "checkpoint-8")


def test_engine_strategy_owns_optimizer_backward_clipping_and_step(tmp_path, calls):
    trainer = _train(tmp_path, "fixture_engine", max_grad_norm=0.5, logging_steps=2)
    assert calls["fixture_engine.setup"] == 1
    assert isinstance(trainer.optimizer, torch.optim.SGD)  # built by the strategy, not --optim's adamw
    assert trainer.lr_scheduler is not None and trainer.lr_scheduler.last_epoch == 8  # made from the function, stepped once per step
    assert calls["fixture_engine.backward"] == 8 and calls["fixture_engine.optimizer_step"] == 8
    logged = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    assert len(logged) == 4 and all(n > 0 for n in logged)  # the norm the strategy's step computed
    manifest = json.loads((tmp_path / "out" / "checkpoint-8" / "manifest.json").read_text())
    assert pickled_files(manifest) == ["engine/optimizer.pkl"]


@pytest.mark.parametrize("strategy", ["fixture_sharded", "fixture_engine"])
def test_resume_through_the_strategy_is_exact(tmp_path, strategy, calls):
    report = verify_resume(make_args(tmp_path / "unused", strategy=strategy, max_steps=16), 7, task=build, workdir=tmp_path)
    assert report.identical, str(report)
    assert calls[f"{strategy}.load_checkpoint"] >= 1


def test_best_model_at_end_loads_through_the_strategy(tmp_path, calls):
    args = make_args(tmp_path / "out", strategy="fixture_sharded", max_steps=8, eval_strategy="steps", eval_steps=4,
                     save_strategy="steps", save_steps=4, load_best_model_at_end=True, metric_for_best_model="loss")
    trainer = Trainer(model=Net(), args=args, train_dataset=Samples(NUM_SAMPLES), eval_dataset=Samples(24))
    trainer.train()
    assert calls["fixture_sharded.load_checkpoint"] == 1
    assert trainer.state.best_model_checkpoint is not None


def test_evaluate_from_a_sharded_checkpoint_loads_through_the_strategy(tmp_path, calls):
    """`treadle evaluate --resume_from_checkpoint` of a checkpoint with no model.safetensors."""
    from treadle.cli import main

    _train(tmp_path, "fixture_sharded")
    checkpoint = tmp_path / "out" / "checkpoint-8"
    calls.clear()
    status = main(["evaluate", "--task", "resume_task:build", "--strategy", "fixture_sharded", "--output_dir",
                   str(tmp_path / "eval"), "--resume_from_checkpoint", str(checkpoint), "--report_to", "none",
                   "--disable_tqdm", "true"])
    assert status == 0
    assert calls["fixture_sharded.load_checkpoint"] == 1
