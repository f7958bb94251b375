"""Training-side measurements: the loss of the logging window, speeds, and metric formatting.

The loss of every micro-batch stays a device tensor until something is logged, so a training
step never waits for the device (no ``.item()`` per step). Non-finite losses are counted when
the window is read, and always reported, whatever ``logging_nan_inf_filter`` does to the mean.
The window and the running totals go into checkpoints (``LossWindowState``), so a resumed run
logs the same losses and the same ``train_loss`` as the run that never stopped.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch

from treadle.markers import hookimpl

_COMPACT_AT = 1024


@dataclass
class WindowReading:
    """The loss of one logging window."""

    loss: float
    """Mean loss per optimizer step (non-finite micro-batches left out when filtering)."""
    non_finite: int
    """Micro-batches whose loss was NaN or Inf."""
    steps: int


class LossWindow:
    """Micro-batch losses since the last log, and the run's running total for ``train_loss``.

    Each micro-batch loss is already weighted so that the losses of one optimizer step add up
    to that step's loss. A long window (``logging_strategy no``) is folded into three device
    scalars every ``_COMPACT_AT`` entries, so memory stays flat.
    """

    def __init__(self, filter_non_finite: bool) -> None:
        self.filter_non_finite = filter_non_finite
        self.pending: list[torch.Tensor] = []
        self._folded: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self._count = 0
        self.total_loss = 0.0
        self.total_steps = 0
        self.logged_step: Optional[int] = None
        """The global step of the last log: the window holds the losses of the steps after it.
        None until training starts (or a checkpoint restores it)."""

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss)
        if len(self.pending) >= _COMPACT_AT:
            self._fold()

    def _fold(self) -> None:
        losses = torch.stack(self.pending).float()
        self._count += len(self.pending)
        self.pending = []
        finite = torch.isfinite(losses)
        folded = (torch.where(finite, losses, 0.0).sum(), finite.sum(), losses.sum())
        if self._folded is not None:
            folded = tuple(a + b for a, b in zip(self._folded, folded))
        self._folded = folded  # type: ignore[assignment]

    def has_data(self) -> bool:
        return bool(self.pending) or self._folded is not None

    def read(self, steps: int, strategy: Any = None) -> WindowReading:
        """Summarise and clear the window covering ``steps`` optimizer steps (one host sync).

        With a ``strategy`` of several processes (every rank reads at the same step), the
        window's sums are added over the ranks first: the loss is the mean over all of them.
        """
        if self.pending:
            self._fold()
        if self._folded is None or steps <= 0:
            return WindowReading(float("nan"), 0, steps)
        replicas = 1 if strategy is None else strategy.world_size
        if replicas > 1:
            sums = strategy.all_reduce(torch.stack([v.double() for v in self._folded]), op="sum") / replicas
            finite_sum, finite_count, raw_sum = (v.item() for v in sums)
        else:
            finite_sum, finite_count, raw_sum = (v.item() for v in self._folded)
        count, self._count, self._folded = self._count, 0, None
        if self.filter_non_finite and finite_count > 0:
            loss = finite_sum * (count / finite_count) / steps
        else:
            loss = raw_sum / steps
        self.total_loss += loss * steps
        self.total_steps += steps
        return WindowReading(loss, count - int(finite_count), steps)

    def mean_train_loss(self) -> float:
        return self.total_loss / self.total_steps if self.total_steps else float("nan")

    def state_dict(self, strategy: Any = None) -> dict[str, Any]:
        """The window as it is (not folded: a resumed run then sums the losses in the same order).

        With several processes each rank's window differs (its own micro-batches), while one
        file is written: the windows are gathered into rows, one per rank (``per_rank``), and
        each rank takes its own row back on load. Every rank calls this at the same step.
        """
        state = {
            "pending": torch.stack(self.pending) if self.pending else None,
            "folded": list(self._folded) if self._folded is not None else None,
            "count": self._count,
            "total_loss": self.total_loss,
            "total_steps": self.total_steps,
            "logged_step": self.logged_step,
        }
        if strategy is not None and strategy.world_size > 1:
            rows = functools.partial(_rows_per_rank, strategy)
            state["pending"] = None if state["pending"] is None else rows(state["pending"])
            state["folded"] = None if self._folded is None else rows(torch.stack([v.double() for v in self._folded]))
            state["per_rank"] = True
        return state

    def load_state_dict(self, state: Mapping[str, Any], device: Any = None, rank: int = 0) -> None:
        pending, folded = state["pending"], state["folded"]
        if state.get("per_rank"):
            pending = None if pending is None else pending[rank]
            if folded is not None:  # back to the dtypes _fold makes: float sums, an integer count
                folded = [folded[rank][0].float(), folded[rank][1].long(), folded[rank][2].float()]
        self.pending = [] if pending is None else list(pending.to(device).unbind(0))
        self._folded = None if folded is None else tuple(v.to(device) for v in folded)  # type: ignore[assignment]
        self._count = int(state["count"])
        self.total_loss = float(state["total_loss"])
        self.total_steps = int(state["total_steps"])
        self.logged_step = state["logged_step"]


class LossWindowState:
    """Core plugin of every run: the Trainer's ``LossWindow`` in checkpoints, by the public hooks.

    Without it, the first log after a resume would average only the steps since the resume, and
    ``train_loss`` would cover only the resumed part of the training.
    """

    name = "treadle:loss_window"

    def __init__(self, window: Callable[[], LossWindow]) -> None:
        self._window = window  # the Trainer makes a new window for each train()

    @hookimpl
    def treadle_checkpoint_state(self, trainer: Any) -> dict[str, Any]:
        return self._window().state_dict(getattr(trainer, "strategy", None))

    @hookimpl
    def treadle_load_checkpoint_state(self, trainer: Any, states: Mapping[str, Any]) -> None:
        saved = states.get(self.name)
        if saved is not None:
            device = getattr(trainer.strategy, "root_device", None) or "cpu"
            self._window().load_state_dict(saved, device=device, rank=trainer.strategy.global_rank)


def _rows_per_rank(strategy: Any, tensor: torch.Tensor) -> torch.Tensor:
    """``(world_size, n)``: every rank's 1-D ``tensor`` as one row (all ranks hold the same n)."""
    return strategy.all_gather(tensor.reshape(1, -1)).reshape(strategy.world_size, -1).cpu()


def speed_metrics(
    split: str, start_time: float, num_samples: Optional[int] = None, num_steps: Optional[int] = None, num_tokens: Optional[int] = None
) -> dict[str, float]:
    """``<split>_runtime`` and the per-second rates the seeds name."""
    runtime = time.perf_counter() - start_time
    result = {f"{split}_runtime": round(runtime, 4)}
    if runtime <= 0:
        return result
    if num_samples is not None:
        result[f"{split}_samples_per_second"] = round(num_samples / runtime, 3)
    if num_steps is not None:
        result[f"{split}_steps_per_second"] = round(num_steps / runtime, 3)
    if num_tokens is not None:
        result[f"{split}_tokens_per_second"] = round(num_tokens / runtime, 3)
    return result


def derived_metrics(trainer: Any, metrics: Mapping[str, Any], metric_key_prefix: str) -> dict[str, Any]:
    """What the run's ``treadle_derive_metrics`` implementations compute from ``metrics``.

    Before an evaluation is logged, so its log line, reporters and results all carry them.
    A returned name that is already measured is a ``UsageError``: deriving never replaces.
    """
    from types import MappingProxyType

    from treadle.errors import UsageError

    run_hooks = getattr(trainer, "run_hooks", None)
    if run_hooks is None or not run_hooks.impls("treadle_derive_metrics"):
        return {}
    derived: dict[str, Any] = {}
    for result in run_hooks.call("treadle_derive_metrics", trainer=trainer, args=trainer.args, state=trainer.state,
                                 metrics=MappingProxyType(dict(metrics)), metric_key_prefix=metric_key_prefix):
        for name, value in (result or {}).items():
            if name in metrics or name in derived:
                raise UsageError(
                    f"treadle_derive_metrics returned {name!r}, which this evaluation already has; a derived "
                    "metric needs a name of its own (e.g. <prefix>_perplexity)"
                )
            derived[name] = to_python_number(value)
    return derived


def to_python_number(value: Any) -> Any:
    """Metric values as plain Python numbers (numpy and 0-dim tensors included)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def metrics_format(metrics: dict[str, Any]) -> dict[str, str]:
    """Metrics for people: runtimes as h:mm:ss.ss, FLOs in GF, floats to 4 decimals."""
    formatted = {}
    for key, value in metrics.items():
        if key.endswith("_runtime") and isinstance(value, (int, float)):
            hours, rest = divmod(value, 3600)
            minutes, seconds = divmod(rest, 60)
            formatted[key] = f"{int(hours)}:{int(minutes):02d}:{seconds:05.2f}"
        elif key == "total_flos" and isinstance(value, (int, float)):
            formatted[key] = f"{value / 1e9:.0f}GF"
        elif isinstance(value, float):
            formatted[key] = f"{value:.4g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{round(value, 4)}"
        else:
            formatted[key] = str(value)
    return formatted


def metrics_table(split: str, metrics: dict[str, Any]) -> str:
    """``log_metrics``' text: a title line, then one aligned ``key = value`` line per metric."""
    formatted = metrics_format(metrics)
    width = max((len(k) for k in formatted), default=0)
    lines = [f"***** {split} metrics *****"] + [f"  {key:<{width}} = {formatted[key]:>9}" for key in sorted(formatted)]
    return "\n".join(lines)


def write_results(output_dir: str, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
    """``<split>_results.json``, and the same values merged into ``all_results.json``."""
    os.makedirs(output_dir, exist_ok=True)
    _write_json(os.path.join(output_dir, f"{split}_results.json"), metrics)
    if combined:
        path = os.path.join(output_dir, "all_results.json")
        merged: dict[str, Any] = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                merged = json.load(f)
        merged.update(metrics)
        _write_json(path, merged)


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


class TokenCounter:
    """``include_num_input_tokens_seen``: input tokens per micro-batch, summed on the device.

    ``all`` counts every position of the main input; ``non_padding`` counts the ones the
    ``attention_mask`` keeps (every position when there is no mask). ``take()`` returns the
    sum since the last call, so reading it is the only host sync.
    """

    def __init__(self, mode: Any) -> None:
        self.mode = {True: "all", False: "no", None: "no"}.get(mode, mode)
        self.pending: Any = 0

    @property
    def enabled(self) -> bool:
        return self.mode != "no"

    def add(self, inputs: Mapping[str, Any], main_input: Optional[str]) -> bool:
        """Count one micro-batch; False when it has no tensor input to count."""
        tokens = inputs.get(main_input) if main_input else None
        if not isinstance(tokens, torch.Tensor):
            return False
        mask = inputs.get("attention_mask")
        if self.mode == "non_padding" and isinstance(mask, torch.Tensor):
            self.pending = self.pending + mask.sum()
        else:
            self.pending = self.pending + tokens.numel()
        return True

    def take(self) -> Any:
        pending, self.pending = self.pending, 0
        return pending
