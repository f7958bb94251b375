"""Tasks the XLA tests train on both backends: the demo without dropout, and a small regression.

XLA draws dropout masks from its own generator, so a run with dropout cannot match the cpu
backend's losses; the comparisons use models without it (the resume test keeps dropout, to
show that XLA's generator is checkpointed).
"""

from __future__ import annotations

import torch
from torch import nn

from treadle.builtin.demo_task import build as build_demo
from treadle.components import TaskParts


def demo_without_dropout(args) -> TaskParts:
    parts = build_demo(args)
    for module in parts.model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return parts


class Pairs(torch.utils.data.Dataset):
    """``n`` fixed inputs with a noisy linear target."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 5, generator=g)
        self.y = self.x @ torch.tensor([0.5, -1.0, 2.0, 0.0, 1.5]) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i]}


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x, labels=None):
        prediction = self.body(x).squeeze(-1)
        if labels is None:
            return {"logits": prediction}
        return {"loss": nn.functional.mse_loss(prediction, labels), "logits": prediction}


def small_regression(args) -> TaskParts:
    torch.manual_seed(args.seed)
    return TaskParts(model=Regressor(), train_dataset=Pairs(96), eval_dataset=Pairs(40, seed=1))


def _mean_absolute_error(prediction) -> dict:
    predictions = torch.as_tensor(prediction.predictions).reshape(-1)
    labels = torch.as_tensor(prediction.label_ids).reshape(-1)
    return {"mae": float((predictions - labels).abs().mean()), "count": float(labels.numel())}


def seeded_regression(args) -> TaskParts:
    """``small_regression`` whose weights come from a generator of its own.

    Replicas that are threads of one process share torch's global generator, so a model built
    from it depends on how the threads interleave; these weights do not, and the metrics need
    the gathered predictions (every evaluation sample once).
    """
    model = Regressor()
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return TaskParts(model=model, train_dataset=Pairs(96), eval_dataset=Pairs(40, seed=1),
                     compute_metrics=_mean_absolute_error)
