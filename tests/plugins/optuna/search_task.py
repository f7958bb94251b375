"""A small task to search over: 3-class data a tiny MLP learns in a few dozen steps.

``model_init`` takes the trial; with ``SEARCH_TASK_KILL_AT=N`` in the environment the process
kills itself (SIGKILL, no cleanup) when trial N starts, as a crash mid-search would.
"""

from __future__ import annotations

import os
import signal

import torch
from torch import nn
from torch.nn import functional as F

from treadle import TaskParts


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i]}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x, labels=None):
        logits = self.body(x)
        return {"logits": logits} if labels is None else {"loss": F.cross_entropy(logits, labels), "logits": logits}


def model_init(trial=None):
    kill_at = os.environ.get("SEARCH_TASK_KILL_AT")
    if trial is not None and kill_at is not None and trial.number == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)
    torch.manual_seed(0)
    return Net()


def build(args) -> TaskParts:
    return TaskParts(model_init=model_init, train_dataset=Rows(256, 0), eval_dataset=Rows(128, 1))
