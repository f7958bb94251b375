"""A small object shaped like the Trainer, as far as ``treadle.checkpoint`` reads it.

Lets the checkpoint tests run real models, optimizers, schedulers and the real component base
classes without the training loop. ``train_steps`` does a few deterministic optimizer steps
that also draw from every random generator a checkpoint must restore.
"""

from __future__ import annotations

import dataclasses
import json
import random
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch

from treadle.components import Backend, Precision, Strategy
from treadle.markers import hookimpl
from treadle.plugins import RunHooks


@dataclasses.dataclass
class StandinState:
    global_step: int = 0
    epoch: float = 0.0
    best_metric: Optional[float] = None
    best_global_step: Optional[int] = None
    best_model_checkpoint: Optional[str] = None
    train_batch_size: Optional[int] = None
    log_history: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_to_json(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh)

    @classmethod
    def load_from_json(cls, path: str) -> "StandinState":
        with open(path) as fh:
            return cls(**json.load(fh))


class CpuBackend(Backend):
    name = "cpu"

    @classmethod
    def is_available(cls) -> bool:
        return True

    def setup_device(self, local_rank: int) -> torch.device:
        return torch.device("cpu")


class OneDevice(Strategy):
    name = "single"

    def setup_model(self, model):
        return model


class CounterPlugin:
    """A plugin with checkpoint state: counts steps, stores one tensor and one number."""

    def __init__(self) -> None:
        self.count = 0
        self.buffer = torch.zeros(3)

    @hookimpl
    def treadle_checkpoint_state(self, trainer):
        return {"count": self.count, "buffer": self.buffer.clone()}

    @hookimpl
    def treadle_load_checkpoint_state(self, states):
        mine = states.get("counter")
        if mine is not None:
            self.count = mine["count"]
            self.buffer = mine["buffer"]


def make_args(output_dir, **overrides) -> SimpleNamespace:
    values = dict(
        output_dir=str(output_dir),
        save_total_limit=None,
        save_only_model=False,
        save_on_each_node=False,
        save_safetensors=True,
        metric_for_best_model=None,
        greater_is_better=None,
        load_best_model_at_end=False,
        restore_callback_states_from_checkpoint=False,
        hub_token="secret-token",
    )
    values.update(overrides)
    args = SimpleNamespace(**values)
    args.to_json_string = lambda: json.dumps({k: ("<HUB_TOKEN>" if k == "hub_token" else v) for k, v in values.items()})
    return args


class StandinTrainer:
    def __init__(self, output_dir, *, seed: int = 0, tied: bool = False, **arg_overrides) -> None:
        torch.manual_seed(seed)
        self.args = make_args(output_dir, **arg_overrides)
        self.state = StandinState()
        self.model = TinyModel(tied=tied)
        self.backend = CpuBackend(self.args)
        self.precision = Precision(self.args)
        self.strategy = OneDevice(self.args, self.backend, self.precision)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2, betas=(0.9, 0.99))
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0 / (1 + step))
        self.run_hooks = RunHooks()
        self.counter = CounterPlugin()
        self.run_hooks.register(self.counter, "counter")

    def stateful_callbacks(self) -> list:
        return []

    def train_steps(self, n: int) -> None:
        for _ in range(n):
            x = torch.randn(4, 8) + float(np.random.rand()) + random.random()
            loss = self.model(x).pow(2).mean()
            loss.backward()
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
            self.state.global_step += 1
            self.counter.count += 1
            self.counter.buffer += 1

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}


class TinyModel(torch.nn.Module):
    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, 8, bias=False)
        self.hidden = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 8, bias=False)
        if tied:
            self.out.weight = self.embed.weight
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        self.calls += 1
        return self.out(torch.nn.functional.dropout(torch.relu(self.hidden(self.embed(x))), 0.2, self.training))
