"""Helpers the hub tests share: the test token and a small Trainer that pushes to the hub."""

from __future__ import annotations

TOKEN = "hf_treadleTestSecret0123456789"
"""Handed to the runs as --hub_token / HF_TOKEN / a saved login; must never show up in a file or log."""

OPEN_RUNS: list = []
"""Trainers whose run the ``fake_hub`` fixture ends (``run_end``: the last upload) while the hub still answers."""


def track(trainer):
    OPEN_RUNS.append(trainer)
    return trainer


def tiny_trainer(output_dir, *, callbacks=None, processing_class=None, **overrides):
    """A Trainer of the hub task with --push_to_hub, quick to train."""
    import hub_task
    from treadle.args import TrainingArguments
    from treadle.trainer import Trainer

    values = dict(output_dir=str(output_dir), max_steps=4, save_steps=2, per_device_train_batch_size=16,
                  report_to=["none"], disable_tqdm=True, push_to_hub=True, hub_token=TOKEN,
                  task="hub_task:build", plugin_options={"hub_retry_delay": 0.05})
    values.update(overrides)
    args = TrainingArguments(**values)
    parts = hub_task.build(args)
    return track(Trainer(model=parts.model, args=args, train_dataset=parts.train_dataset, eval_dataset=parts.eval_dataset,
                         compute_metrics=parts.compute_metrics, callbacks=callbacks, processing_class=processing_class))
