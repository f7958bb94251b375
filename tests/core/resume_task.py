"""The tiny task the resume tests train: fixed data, a small MLP with dropout.

Dropout makes every step draw from torch's RNG, so a resume that loses the RNG state changes
the loss at the first step after it. ``Samples`` counts the items it loads, so a test can tell
whether a resume read the batches it should have skipped.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_SAMPLES = 100
"""Training samples of ``build``: with batches of 8, 13 micro-batches per epoch, the last one short."""


class Samples(torch.utils.data.Dataset):
    """``n`` fixed random feature vectors with one of three labels."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.loaded = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        self.loaded += 1
        return {"x": self.x[i], "labels": self.y[i]}


class NoisySamples(Samples):
    """``Samples`` with random augmentation: noise drawn from torch's RNG at every load."""

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        return {"x": item["x"] + 0.1 * torch.randn(6), "labels": item["labels"]}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 16)
        self.drop = nn.Dropout(0.3)
        self.l2 = nn.Linear(16, 3)

    def forward(self, x, labels=None):
        logits = self.l2(self.drop(torch.relu(self.l1(x))))
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def build(args) -> "TaskParts":
    """The task as ``--task resume_task:build``: ``NUM_SAMPLES`` to train on, 24 to evaluate."""
    from treadle.components import TaskParts

    return TaskParts(model=Net(), train_dataset=Samples(NUM_SAMPLES), eval_dataset=Samples(24))


def build_noisy(args) -> "TaskParts":
    """``build`` with randomly augmented training samples."""
    from treadle.components import TaskParts

    return TaskParts(model=Net(), train_dataset=NoisySamples(NUM_SAMPLES), eval_dataset=Samples(24))
