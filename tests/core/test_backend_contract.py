"""The Backend contract through the real loop, with the ``counting`` backend of treadle-fixture-device.

That backend marks step ends, wraps every loader in a prefetching iterable, places each batch
itself and keeps an RNG of its own (as a lazy device like XLA would); the loop must call each
exactly where the contract says, resume exactly with it, and leave the cpu backend's steps
without any of these calls.
"""

from __future__ import annotations

import math

import pytest
import torch

from treadle.args import TrainingArguments
from treadle.builtin.demo_task import build as build_demo
from treadle.markers import hookimpl
from treadle.trainer import Trainer
from treadle.verify_resume import verify_resume

pytestmark = pytest.mark.usefixtures("installed_plugins")


def demo_args(output_dir, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir), backend="counting", max_steps=12, per_device_train_batch_size=32,
        per_device_eval_batch_size=100, learning_rate=2e-3, seed=5, report_to=["none"], disable_tqdm=True,
        save_strategy="no", logging_steps=4,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def demo_trainer(args) -> Trainer:
    parts = build_demo(args)
    return Trainer(model=parts.model, args=args, train_dataset=parts.train_dataset, eval_dataset=parts.eval_dataset,
                   compute_metrics=parts.compute_metrics)


def test_the_loop_marks_each_step_and_each_eval_batch(tmp_path):
    args = demo_args(tmp_path, eval_strategy="steps", eval_steps=6)
    trainer = demo_trainer(args)
    backend = trainer.backend
    assert type(backend).__name__ == "CountingBackend"
    trainer.train()
    eval_batches = math.ceil(len(trainer.eval_dataset) / args.per_device_eval_batch_size)
    evaluations = 12 // 6
    assert backend.step_ends == 12 + evaluations * eval_batches
    # one wrapped loader per epoch started (12 steps of 32 fit in the first epoch) and per evaluation
    assert backend.loaders_wrapped == 1 + evaluations
    assert backend.batches_yielded == 12 + evaluations * eval_batches
    assert backend.batches_moved >= backend.batches_yielded  # every batch went through move_batch

    before = backend.step_ends
    predictions = trainer.predict(trainer.eval_dataset)
    assert predictions.predictions.shape[0] == len(trainer.eval_dataset)
    assert backend.step_ends == before + eval_batches


@pytest.mark.parametrize("accumulation", [1, 3])
def test_training_with_the_counting_backend_matches_the_cpu_backend(tmp_path, accumulation):
    """With accumulation the loop reads micro-batches in groups from one pass over the wrapped loader."""
    losses = {}
    for name in ("counting", "cpu"):
        trainer = demo_trainer(demo_args(tmp_path / name, backend=name, gradient_accumulation_steps=accumulation))
        trainer.train()
        losses[name] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses["counting"] == losses["cpu"] and len(losses["cpu"]) == 3


def test_resume_with_the_counting_backend_is_exact(tmp_path):
    report = verify_resume(demo_args(tmp_path / "unused", eval_strategy="steps", eval_steps=5), 7, task="demo",
                           workdir=tmp_path)
    assert report.identical, str(report)
    straight = [r.step for r in report.straight]
    assert straight == list(range(1, 13)) and [r.step for r in report.resumed] == straight


def test_the_device_rng_goes_into_the_checkpoint(tmp_path):
    args = demo_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=4)
    trainer = demo_trainer(args)
    trainer.train()
    resumed = demo_trainer(demo_args(tmp_path, max_steps=4))
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert torch.equal(resumed.backend.generator.get_state(), trainer.backend.generator.get_state())


def test_the_run_seeds_the_device_generator(tmp_path):
    args = demo_args(tmp_path, seed=21, max_steps=2)
    trainer = demo_trainer(args)
    assert trainer.backend.seeds == [21]
    first = float(torch.rand(1, generator=trainer.backend.generator))

    parts = build_demo(args)
    again = Trainer(model_init=lambda: parts.model, args=args, train_dataset=parts.train_dataset)
    again.train()  # model_init: seeded again before the model is built
    assert again.backend.seeds == [21, 21]
    assert again.backend.draws[0] == first


def test_args_device_and_n_gpu_come_from_the_selected_backend(tmp_path):
    args = demo_args(tmp_path)
    assert args.device == torch.device("cpu") and args.n_gpu == 0
    assert args.parallel_mode == "counting"  # a backend with its own replica model names it
    args.n_gpu, args.device = 1, "cpu"  # set by hand, they stay
    assert (args.n_gpu, args.device) == (1, "cpu")
    assert TrainingArguments(output_dir=str(tmp_path), use_cpu=True).parallel_mode == "not_parallel"


def test_auto_never_picks_a_lower_priority_backend_than_cpu(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=["none"])
    assert args.device == torch.device("cpu")
    assert type(Trainer(model=torch.nn.Linear(2, 2), args=args).backend).__name__ == "CpuBackend"


class SeenAtTrainBegin:
    """Records what the loop decided to call per step, once it configured the run."""

    seen: tuple = ()

    @hookimpl
    def treadle_on_train_begin(self, trainer) -> None:
        self.seen = (trainer._step_end, trainer._process_loader, trainer._inputs_to_device)


def test_cpu_backend_steps_call_no_backend_method(tmp_path):
    """The cpu backend overrides none of the per-step methods, so the loop calls none of them."""
    watcher = SeenAtTrainBegin()
    parts = build_demo(demo_args(tmp_path, backend="cpu"))
    trainer = Trainer(model=parts.model, args=demo_args(tmp_path, backend="cpu", max_steps=2),
                      train_dataset=parts.train_dataset, callbacks=[watcher])
    trainer.train()
    assert watcher.seen == (None, None, False)
    counting = demo_trainer(demo_args(tmp_path))
    assert counting._step_end is not None and counting._process_loader is not None and counting._inputs_to_device


def test_env_lists_every_backend_with_its_availability(capsys):
    from treadle.cli import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    block = out.split("- backends (--backend auto takes the first available):\n")[1].split("- plugins:")[0]
    assert "    - cpu (treadle): available\n" in block
    assert "    - counting (treadle-fixture-device): available\n" in block
    assert block.index("cpu (treadle)") < block.index("counting")  # in auto order: priority -10 comes last
