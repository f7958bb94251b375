"""Stand-ins for optimizers that need more of the loop than ``backward`` + ``step``.

The real ones (LOMO / AdaLomo, schedule-free) are not installed here; these classes have the
same shape, so the loop's support for them is tested for real. They are selected by
``--optim optimizer_standins:<factory>``.
"""

from __future__ import annotations

from typing import Any

import torch


class FusedSGD(torch.optim.Optimizer):
    """Like LOMO: built from the model, updates each parameter inside ``fused_backward``; no ``step()``."""

    def __init__(self, model: torch.nn.Module, lr: float) -> None:
        super().__init__(model.parameters(), {"lr": lr})
        self.model = model
        self.learning_rates: list[float] = []

    def fused_backward(self, loss: torch.Tensor, lr: float) -> None:
        self.learning_rates.append(lr)
        loss.backward()
        with torch.no_grad():
            for param in self.model.parameters():
                if param.grad is not None:
                    param.add_(param.grad, alpha=-lr)
                    param.grad = None


def fused_sgd(args: Any, model: Any = None) -> tuple[type, dict[str, Any]]:
    return FusedSGD, {"params": model, "lr": args.learning_rate}


def output_layer_only(args: Any, model: Any = None) -> tuple[type, dict[str, Any]]:
    """Like GaLore / APOLLO: the factory builds its own parameter groups (here: only ``out``)."""
    return torch.optim.SGD, {"params": [{"params": list(model.out.parameters())}], "lr": args.learning_rate}


class ModalSGD(torch.optim.SGD):
    """Like a schedule-free optimizer: has ``train()`` / ``eval()`` and refuses to step outside train mode."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.mode = None

    def train(self) -> None:
        self.mode = "train"

    def eval(self) -> None:
        self.mode = "eval"

    def step(self, closure: Any = None) -> Any:
        if self.mode != "train":
            raise RuntimeError(f"step() in {self.mode} mode: call optimizer.train() first")
        return super().step(closure)


def modal_sgd(args: Any, model: Any = None) -> tuple[type, dict[str, Any]]:
    return ModalSGD, {"lr": args.learning_rate}
