"""Exact resume through the real Trainer: stop anywhere, resume, get the same bits.

Each case runs ``verify_resume`` (straight run vs stop + resume) on a tiny task with dropout,
so a resume that loses the RNG state, the data position, the optimizer or the scheduler shows
up as a named difference at the first step after the stop.
"""

from __future__ import annotations

import json

import pytest
import torch
from resume_task import NUM_SAMPLES, Net, Samples, build, build_noisy
from treadle.args import TrainingArguments
from treadle.callbacks import EarlyStoppingCallback
from treadle.checkpoint import run_state
from treadle.markers import hookimpl
from treadle.trainer import Trainer
from treadle.verify_resume import verify_resume


def make_args(output_dir, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir), max_steps=30, per_device_train_batch_size=8, learning_rate=1e-2,
        lr_scheduler_type="cosine", warmup_steps=3, seed=3, report_to=["none"], disable_tqdm=True,
        save_strategy="no", logging_steps=5,
    )
    values.update(overrides)
    return TrainingArguments(**values)


CASES = {
    "mid-epoch": ({}, 5),
    "epoch boundary": ({}, 13),
    "gradient accumulation, mid-epoch": ({"gradient_accumulation_steps": 3}, 7),
    "gradient accumulation, epoch boundary": ({"gradient_accumulation_steps": 3}, 5),
    "dataloader workers": ({"dataloader_num_workers": 2, "max_steps": 16}, 9),
    "eval, clipping, best checkpoint, rotation": (
        {"eval_strategy": "steps", "eval_steps": 4, "save_strategy": "steps", "save_steps": 4, "save_total_limit": 1,
         "load_best_model_at_end": True, "metric_for_best_model": "loss", "max_grad_norm": 0.5}, 10),
    "sgd with momentum, linear schedule": ({"optim": "sgd", "optim_args": "momentum=0.9", "lr_scheduler_type": "linear"}, 11),
    "adafactor": ({"optim": "adafactor", "learning_rate": 1e-3}, 4),
    "random augmentation, no workers": ({"max_steps": 16}, 6, build_noisy),
    "random augmentation in workers": ({"dataloader_num_workers": 2, "max_steps": 16}, 6, build_noisy),
    "random augmentation in persistent workers, epoch boundary": (
        {"dataloader_num_workers": 2, "dataloader_persistent_workers": True, "max_steps": 30}, 13, build_noisy),
}


@pytest.mark.parametrize("case", CASES)
def test_resume_is_exact(tmp_path, case):
    overrides, stop_at, task = (*CASES[case], build)[:3]
    report = verify_resume(make_args(tmp_path / "unused", **overrides), stop_at, task=task, workdir=tmp_path)
    assert report.identical, str(report)
    assert [r.step for r in report.straight] == list(range(1, report.max_steps + 1))
    assert [r.step for r in report.resumed] == [r.step for r in report.straight]


def test_a_resume_that_skips_no_data_is_reported_at_the_first_step(tmp_path):
    report = verify_resume(make_args(tmp_path / "unused", ignore_data_skip=True), 6, task=build, workdir=tmp_path)
    assert not report.identical
    assert (report.step, report.quantity) == (7, "batch")
    assert "step 7 (after the resume): batch differs" in str(report)


def test_a_resume_that_loses_the_rng_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(run_state, "restore_rng_state", lambda trainer, state: None)
    report = verify_resume(make_args(tmp_path / "unused"), 6, task=build, workdir=tmp_path)
    assert not report.identical
    assert report.step == 7 and report.quantity in ("loss", "rng"), str(report)


def _train(output_dir, dataset=None, callbacks=None, resume=None, **overrides):
    torch.manual_seed(0)
    args = make_args(output_dir, **overrides)
    trainer = Trainer(model=Net(), args=args, train_dataset=dataset or Samples(NUM_SAMPLES), eval_dataset=Samples(24),
                      callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


class CountFromTrainBegin:
    """Reset the dataset's load counter when the loop starts (set-up may peek at a sample)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    @hookimpl
    def treadle_on_train_begin(self) -> None:
        self.dataset.loaded = 0


def test_resume_does_not_load_the_skipped_batches(tmp_path):
    _train(tmp_path, max_steps=12, save_strategy="steps", save_steps=12)
    dataset = Samples(NUM_SAMPLES)
    trainer = _train(tmp_path, dataset=dataset, callbacks=[CountFromTrainBegin(dataset)], max_steps=14, resume=True)
    assert trainer.state.global_step == 14
    # step 12 ended 12 batches into epoch 0 (13 batches); steps 13-14 read batch 12 (4 items) and one of epoch 1
    assert dataset.loaded == 4 + 8


def test_callback_states_are_restored_only_when_asked(tmp_path):
    watch = dict(eval_strategy="steps", eval_steps=2, metric_for_best_model="loss", save_strategy="steps",
                 save_steps=6, max_steps=6)
    first = EarlyStoppingCallback(early_stopping_patience=100)
    _train(tmp_path, callbacks=[first], **watch)
    saved = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())["stateful_callbacks"]
    assert saved["EarlyStoppingCallback"]["attributes"]["best_metric"] == first.best_metric

    untouched = EarlyStoppingCallback(early_stopping_patience=100)
    _train(tmp_path, callbacks=[untouched], resume=str(tmp_path / "checkpoint-6"), **watch)
    assert untouched.best_metric is None

    restored = EarlyStoppingCallback(early_stopping_patience=100)
    _train(tmp_path, callbacks=[restored], resume=str(tmp_path / "checkpoint-6"),
           restore_callback_states_from_checkpoint=True, **watch)
    assert restored.best_metric == first.best_metric
    assert restored.early_stopping_patience_counter == first.early_stopping_patience_counter


def test_the_command(tmp_path, capsys, monkeypatch):
    from treadle.cli import main as cli_main

    def main(argv):
        return cli_main(["verify-resume", *argv])

    monkeypatch.chdir(tmp_path)
    common = ["--task", "resume_task:build", "--max_steps", "12", "--per_device_train_batch_size", "8",
              "--report_to", "none", "--disable_tqdm", "--save_strategy", "no", "--seed", "3"]
    assert main([*common, "--stop_at", "5"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1].startswith("identical: 12 steps straight and 5 + resume + 7 agree")
    assert "verify-resume 3/3: resume from checkpoint-5" in err

    assert main([*common, "--stop_at", "5", "--ignore_data_skip"]) == 1
    assert "different: step 6 (after the resume): batch differs" in capsys.readouterr().out

    assert main([*common, "--stop_at", "12"]) == 2
    assert "--stop_at must be between 1 and max_steps - 1 = 11" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # the runs happen in a temporary directory


class Tally:
    """A callback that keeps its own state in checkpoints through the plugin-state hooks."""

    def __init__(self) -> None:
        self.steps = 0
        self.restored = None

    @hookimpl
    def treadle_on_step_end(self) -> None:
        self.steps += 1

    @hookimpl
    def treadle_checkpoint_state(self):
        return {"steps": self.steps, "seen": torch.arange(self.steps)}

    @hookimpl
    def treadle_load_checkpoint_state(self, states) -> None:
        self.restored = states.get("callback:Tally")


def test_a_callbacks_plugin_state_finds_its_way_back(tmp_path):
    _train(tmp_path, callbacks=[Tally()], max_steps=4, save_strategy="steps", save_steps=4)
    saved = json.loads((tmp_path / "checkpoint-4" / "plugin_states.json").read_text())["tree"]
    assert [name for name in saved if name.startswith("callback:")] == ["callback:Tally"]  # no object id
    tally = Tally()
    _train(tmp_path, callbacks=[tally], max_steps=4, resume=True)
    assert tally.restored["steps"] == 4 and torch.equal(tally.restored["seen"], torch.arange(4))
