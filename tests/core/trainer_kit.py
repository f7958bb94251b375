"""Tiny models, datasets and recorders shared by the Trainer tests (tests/core/test_trainer_*.py)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset
from treadle.args import TrainingArguments
from treadle.components import Backend
from treadle.markers import hookimpl

IN, CLASSES = 6, 3


def make_data(n: int = 64, seed: int = 0) -> TensorDataset:
    """``n`` samples of 6 features; the class is decided by the first two features."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return TensorDataset(x, y)


def dict_rows(data: TensorDataset, **extra: Any) -> list[dict[str, Any]]:
    """The same samples as a list of dicts (``x``, ``labels`` and any constant extra keys)."""
    return [{"x": x, "labels": int(y), **extra} for x, y in zip(*data.tensors)]


class Classifier(nn.Module):
    """``forward(x, labels=None)``: a dict with ``logits`` and, given labels, ``loss``."""

    def __init__(self, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.hidden = nn.Linear(IN, hidden)
            self.norm = nn.LayerNorm(hidden)
            self.out = nn.Linear(hidden, CLASSES)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(torch.relu(self.hidden(x))))

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        logits = self.logits(x)
        if labels is None:
            return {"logits": logits}
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class DropoutClassifier(Classifier):
    """``Classifier`` with dropout, so every training forward draws from torch's RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.2)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.drop(torch.relu(self.hidden(x)))))


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol: Any) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], **tol) for k in a)


def identical_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def make_args(tmp_path: Any, **overrides: Any) -> TrainingArguments:
    """Quiet, quick arguments: no reporters, no saving, no logging unless asked."""
    values: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "num_train_epochs": 1,
        "learning_rate": 0.05,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "logging_strategy": "no",
        "save_strategy": "no",
        "disable_tqdm": True,
        "report_to": "none",
        "seed": 0,
    }
    values.update(overrides)
    return TrainingArguments(**values)


class Recorder:
    """Records every lifecycle event it sees (with the global step), through treadle hookimpls."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.logs: list[dict[str, float]] = []
        self.metrics: list[dict[str, float]] = []
        self.saved: list[str] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def _add(self, name: str, state: Any) -> None:
        self.events.append((name, state.global_step))

    @hookimpl
    def treadle_on_init_end(self, state):
        self._add("init_end", state)

    @hookimpl
    def treadle_on_train_begin(self, state):
        self._add("train_begin", state)

    @hookimpl
    def treadle_on_train_end(self, state):
        self._add("train_end", state)

    @hookimpl
    def treadle_on_epoch_begin(self, state):
        self._add("epoch_begin", state)

    @hookimpl
    def treadle_on_epoch_end(self, state):
        self._add("epoch_end", state)

    @hookimpl
    def treadle_on_step_begin(self, state):
        self._add("step_begin", state)

    @hookimpl
    def treadle_on_substep_end(self, state):
        self._add("substep_end", state)

    @hookimpl
    def treadle_on_pre_optimizer_step(self, state):
        self._add("pre_optimizer_step", state)

    @hookimpl
    def treadle_on_optimizer_step(self, state):
        self._add("optimizer_step", state)

    @hookimpl
    def treadle_on_step_end(self, state):
        self._add("step_end", state)

    @hookimpl
    def treadle_on_evaluate(self, state, metrics):
        self._add("evaluate", state)
        self.metrics.append(dict(metrics))

    @hookimpl
    def treadle_on_predict(self, state):
        self._add("predict", state)

    @hookimpl
    def treadle_on_log(self, state, logs):
        self._add("log", state)
        self.logs.append(dict(logs))

    @hookimpl
    def treadle_on_save(self, state, checkpoint_dir):
        self._add("save", state)
        self.saved.append(checkpoint_dir)


class CountingBackend(Backend):
    """A CPU backend that counts ``empty_cache`` calls (selected as ``trainer_kit:CountingBackend``)."""

    name = "counting"
    empty_cache_calls = 0

    @classmethod
    def is_available(cls) -> bool:
        return True

    def setup_device(self, local_rank: int) -> torch.device:
        return torch.device("cpu")

    def empty_cache(self) -> None:
        type(self).empty_cache_calls += 1


class CountingDataset(Dataset):
    """Wraps a dataset and counts how many samples were actually read."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.reads = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        self.reads += 1
        return self.data[index]
