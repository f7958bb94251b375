"""``auto_find_batch_size``: a retry starts clean, and a resume keeps the batch size that was found."""

from __future__ import annotations

import torch
from trainer_kit import DropoutClassifier, identical_weights, make_args, make_data, weights
from treadle.trainer import Trainer
from treadle.verify_resume import StopAt


class RunsOutOfMemoryLate(DropoutClassifier):
    """Batches above 4 fit for two training forwards, then run out of memory (a longer batch, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.large_batches = 0

    def forward(self, x, labels=None):
        if self.training and x.shape[0] > 4:
            self.large_batches += 1
            if self.large_batches > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(x, labels)


def _with_own_optimizer(model, tmp_path, batch_size, **overrides):
    """A Trainer given its own SGD with momentum and a LambdaLR, whose states a retry must restore too."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    args = make_args(tmp_path, per_device_train_batch_size=batch_size, max_steps=6, **overrides)
    return Trainer(model, args, train_dataset=make_data(64), optimizers=(optimizer, scheduler))


def test_a_retry_starts_from_the_initial_weights_optimizer_and_rng(tmp_path):
    torch.manual_seed(1)
    reference = _with_own_optimizer(DropoutClassifier(), tmp_path, 4)
    reference.train()

    torch.manual_seed(1)
    searching = _with_own_optimizer(RunsOutOfMemoryLate(), tmp_path, 16, auto_find_batch_size=True)
    searching.train()  # 16: two steps, then out of memory; 8: out of memory at once; 4 fits

    assert searching.model.large_batches == 4 and searching.state.train_batch_size == 4
    assert searching.lr_scheduler.last_epoch == 6  # not 6 plus the two steps of the failed attempt
    assert identical_weights(weights(reference.model), weights(searching.model))


def test_a_resume_starts_from_the_batch_size_the_checkpoint_recorded(tmp_path):
    def trainer(callbacks=()):
        args = make_args(tmp_path, per_device_train_batch_size=16, auto_find_batch_size=True, max_steps=6,
                         save_strategy="steps", save_steps=3)
        return Trainer(RunsOutOfMemoryLate(), args, train_dataset=make_data(64), callbacks=list(callbacks))

    first = trainer([StopAt(3)])
    first.train()
    assert first.state.train_batch_size == 4

    resumed = trainer()
    resumed.train(resume_from_checkpoint=True)
    assert resumed.model.large_batches == 0  # never tried 16 or 8 again
    assert resumed.state.train_batch_size == 4 and resumed.state.global_step == 6
