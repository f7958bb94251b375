"""The xla backend for real, on PJRT's CPU client: same losses as the cpu backend, exact resume.

Run in the tox env ``xla`` (torch 2.9 + torch-xla 2.9, ``PJRT_DEVICE=CPU``). Each training
compiles its step graphs once per process; the runs are short so the file takes about a minute.
"""

from __future__ import annotations

import logging

import pytest
import torch
from xla_tasks import demo_without_dropout, small_regression

from treadle.args import TrainingArguments
from treadle.trainer import Trainer
from treadle.verify_resume import verify_resume

pytest.importorskip("torch_xla")
pytestmark = pytest.mark.usefixtures("installed_plugins")


@pytest.fixture(autouse=True)
def _pjrt_cpu(monkeypatch):
    monkeypatch.setenv("PJRT_DEVICE", "CPU")


def make_args(output_dir, backend, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir), backend=backend, max_steps=10, per_device_train_batch_size=32,
        per_device_eval_batch_size=64, learning_rate=3e-3, seed=11, report_to=["none"], disable_tqdm=True,
        save_strategy="no", logging_steps=2, dataloader_pin_memory=False,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def train(task, output_dir, backend, **overrides) -> Trainer:
    args = make_args(output_dir, backend, **overrides)
    parts = task(args)
    trainer = Trainer(model=parts.model, args=args, train_dataset=parts.train_dataset, eval_dataset=parts.eval_dataset,
                      compute_metrics=parts.compute_metrics)
    trainer.train()
    return trainer


def logged(trainer, key) -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_demo_trains_on_xla_with_the_cpu_backends_losses(tmp_path):
    xla = train(demo_without_dropout, tmp_path / "xla", "xla", eval_strategy="steps", eval_steps=5)
    cpu = train(demo_without_dropout, tmp_path / "cpu", "cpu", eval_strategy="steps", eval_steps=5)
    assert type(xla.backend).__name__ == "XlaBackend" and xla.strategy.name == "xla"
    assert next(xla.model.parameters()).device.type == "xla"
    assert xla._process_loader is not None and xla._step_end is not None  # parallel loader, step marking
    assert len(logged(xla, "loss")) == 5
    torch.testing.assert_close(logged(xla, "loss"), logged(cpu, "loss"), rtol=1e-3, atol=0)
    torch.testing.assert_close(logged(xla, "eval_loss"), logged(cpu, "eval_loss"), rtol=1e-3, atol=0)
    assert logged(xla, "eval_accuracy") == logged(cpu, "eval_accuracy")


def test_small_task_with_accumulation_and_clipping_matches_cpu(tmp_path):
    options = dict(gradient_accumulation_steps=2, max_grad_norm=0.5, per_device_train_batch_size=8, max_steps=12,
                   eval_strategy="steps", eval_steps=6, lr_scheduler_type="cosine", warmup_steps=2)
    xla = train(small_regression, tmp_path / "xla", "xla", **options)
    cpu = train(small_regression, tmp_path / "cpu", "cpu", **options)
    for key in ("loss", "grad_norm", "eval_loss"):
        torch.testing.assert_close(logged(xla, key), logged(cpu, key), rtol=1e-3, atol=1e-6)
    for (name, a), (_, b) in zip(xla.model.state_dict().items(), cpu.model.state_dict().items()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-5, msg=name)
    predictions = xla.predict(xla.eval_dataset)
    expected = cpu.predict(cpu.eval_dataset).predictions
    torch.testing.assert_close(torch.as_tensor(predictions.predictions), torch.as_tensor(expected), rtol=1e-3, atol=1e-5)


def test_resume_on_xla_is_exact_with_dropout(tmp_path):
    """The demo keeps its dropout: XLA's generator must come back from the checkpoint."""
    args = make_args(tmp_path / "unused", "xla", max_steps=8)
    report = verify_resume(args, 4, task="demo", workdir=tmp_path)
    assert report.identical, str(report)


def test_checkpoint_holds_host_tensors_and_the_xla_seed(tmp_path):
    from safetensors.torch import load_file

    trainer = train(small_regression, tmp_path, "xla", max_steps=4, save_strategy="steps", save_steps=4)
    checkpoint = tmp_path / "checkpoint-4"
    weights = load_file(checkpoint / "model.safetensors")
    assert set(weights) == set(trainer.model.state_dict())
    rng = load_file(checkpoint / "rng_state.safetensors")
    assert any("xla_seed" in key for key in rng), sorted(rng)
    resumed = Trainer(model=small_regression(trainer.args).model, args=make_args(tmp_path, "xla", max_steps=6),
                      train_dataset=small_regression(trainer.args).train_dataset)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6


def test_tpu_metrics_debug_reports_at_the_end(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="treadle.xla"):
        train(small_regression, tmp_path, "xla", max_steps=2, debug="tpu_metrics_debug")
    report = [r.getMessage() for r in caplog.records if r.name == "treadle.xla"]
    assert len(report) == 1 and "CompileTime" in report[0]


def test_cli_trains_on_xla_and_resumes_exactly(run_treadle, tmp_path):
    """``treadle verify-resume``: one process trains straight, stops, resumes, and compares (one import)."""
    done = run_treadle("verify-resume", "--task", "demo", "--backend", "xla", "--max_steps", "6", "--stop_at", "3",
                       "--per_device_train_batch_size", "32", "--eval_strategy", "no", "--report_to", "none",
                       env={"TREADLE_DISABLE_PLUGIN_AUTOLOAD": "", "PJRT_DEVICE": "CPU"})
    assert done.returncode == 0, done.stderr
    assert "identical: 6 steps straight and 3 + resume + 3 agree" in done.stdout


def test_args_device_is_the_xla_device_and_leaves_its_generator_alone(tmp_path):
    import torch_xla.core.xla_model as xm

    args = make_args(tmp_path, "xla")
    trainer = Trainer(model=small_regression(args).model, args=args)
    assert xm.get_rng_state() == args.seed  # the Trainer seeded XLA's generator
    xm.set_rng_state(12345)
    assert args.device == trainer.strategy.root_device and args.device.type == "xla"
    assert args.n_gpu == 0 and args.parallel_mode == "tpu"
    assert xm.get_rng_state() == 12345
