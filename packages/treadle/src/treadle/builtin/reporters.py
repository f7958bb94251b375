"""The builtin reporters: ``console`` (progress bars and log lines) and ``jsonl`` (a metrics file).

Both run on the main process only (``Reporter`` takes care of that) and tolerate ``finish()``
being called more than once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any, Optional

from tqdm.auto import tqdm

from treadle.components import Reporter
from treadle.errors import UsageError
from treadle.markers import hookimpl
from treadle.output_dir import prepare_output_dir

CONSOLE_LOGGER = "treadle.console"
"""The logger the console reporter writes its lines to (a child of ``treadle``)."""

_HIDDEN_ON_CONSOLE = frozenset({"total_flos"})


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"  # throughputs in full, not 9.276e+04
    return str(value)


class _LogLine:
    """A set of metrics rendered only if a handler actually emits the record."""

    __slots__ = ("logs", "step", "max_steps")

    def __init__(self, logs: dict[str, Any], step: int, max_steps: int) -> None:
        self.logs, self.step, self.max_steps = logs, step, max_steps

    def __str__(self) -> str:
        head = f"step {self.step}/{self.max_steps}" if self.max_steps and self.max_steps > 0 else f"step {self.step}"
        body = "  ".join(f"{k} {_format_value(v)}" for k, v in self.logs.items() if k not in _HIDDEN_ON_CONSOLE)
        return f"{head}  {body}"


class _TqdmStderrHandler(logging.Handler):
    """Write records to the current ``sys.stderr`` without tearing an open progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # a logging handler must never raise into the training loop
            self.handleError(record)


def _console_level(args: Any, own_level: int) -> int:
    """The level for the console lines: ``log_level`` (or ``log_level_replica``) when set.

    With ``passive`` it is whatever was configured on the ``treadle.console`` logger itself, else
    INFO, so a plain ``treadle train`` shows its metrics whatever level the rest of treadle logs at.
    """
    chosen = args.log_level if args.should_log else args.log_level_replica
    if chosen != "passive":
        return args.get_process_log_level()
    return own_level if own_level != logging.NOTSET else logging.INFO


class ConsoleReporter(Reporter):
    """A tqdm bar over the optimizer steps (and one over evaluation batches), plus metric lines.

    ``--disable_tqdm`` drops the bars and keeps the lines. Lines go through the
    ``treadle.console`` logger at INFO, so ``--log_level warning`` silences them; when nothing
    else handles log records, the reporter adds a handler that prints them above the bar.
    The per-step work is one ``tqdm.update`` call (tqdm itself decides when to redraw).
    """

    name = "console"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.logger = logging.getLogger(CONSOLE_LOGGER)
        self._state: Any = None
        self._train_bar: Optional[tqdm] = None
        self._eval_bar: Optional[tqdm] = None
        self._shown_step = 0
        self._handler: Optional[logging.Handler] = None
        self._saved_level: Optional[int] = None

    # Reporter contract -------------------------------------------------------------------------
    def setup(self, args: Any, state: Any, model: Any) -> None:
        self._state = state
        if self._saved_level is None:
            self._saved_level = self.logger.level
        self.logger.setLevel(_console_level(args, self._saved_level))
        if self._handler is None and not _has_handler(CONSOLE_LOGGER):
            self._handler = _TqdmStderrHandler()
            self._handler.setFormatter(logging.Formatter("%(message)s"))
            self.logger.addHandler(self._handler)

    def log(self, logs: dict[str, float], step: int) -> None:
        self._close_eval_bar()  # metrics are logged once an evaluation is over
        if self._train_bar is not None and "loss" in logs:
            self._train_bar.set_postfix_str(f"loss {_format_value(logs['loss'])}", refresh=False)
        max_steps = getattr(self._state, "max_steps", 0) if self._state is not None else 0
        self.logger.info("%s", _LogLine(logs, step, max_steps))

    def finish(self) -> None:
        self._close_eval_bar()
        if self._train_bar is not None:
            self._train_bar.close()
            self._train_bar = None
        if self._handler is not None:
            self.logger.removeHandler(self._handler)
            self._handler = None
        if self._saved_level is not None:
            self.logger.setLevel(self._saved_level)
            self._saved_level = None

    # more events ------------------------------------------------------------------------------
    @hookimpl
    def treadle_on_train_begin(self, trainer: Any, args: Any, state: Any) -> None:
        super().treadle_on_train_begin(trainer=trainer, args=args, state=state)
        if not self._active or args.disable_tqdm:
            return
        if self._train_bar is not None:
            self._train_bar.close()
        self._shown_step = state.global_step
        total = state.max_steps if state.max_steps and state.max_steps > 0 else None
        self._train_bar = tqdm(total=total, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True)

    @hookimpl
    def treadle_on_step_end(self, state: Any) -> None:
        bar = self._train_bar
        if bar is not None:
            bar.update(state.global_step - self._shown_step)
            self._shown_step = state.global_step

    @hookimpl
    def treadle_on_prediction_step(self, args: Any, state: Any, num_batches: Optional[int]) -> None:
        if args.disable_tqdm or not self._should_report(state):
            return
        if self._eval_bar is None:
            self._eval_bar = tqdm(
                total=num_batches, desc="eval", unit="batch", leave=self._train_bar is None, dynamic_ncols=True
            )
        self._eval_bar.update(1)

    @hookimpl
    def treadle_on_evaluate(self) -> None:
        self._close_eval_bar()

    @hookimpl
    def treadle_on_predict(self) -> None:
        self._close_eval_bar()

    @hookimpl
    def treadle_on_train_end(self, state: Any) -> None:
        # The console has no run to keep open: close the bars and the handler now; the lines of
        # a final evaluation open it again, and the run's end closes it for good.
        self._active = False
        self.finish()  # also closes bars opened without an active setup

    def _close_eval_bar(self) -> None:
        if self._eval_bar is not None:
            self._eval_bar.close()
            self._eval_bar = None


def _has_handler(name: str) -> bool:
    """Whether a record logged on ``name`` reaches any handler (``lastResort`` aside)."""
    logger: Optional[logging.Logger] = logging.getLogger(name)
    while logger is not None:
        if logger.handlers:
            return True
        logger = logger.parent if logger.propagate else None
    return False


# ---------------------------------------------------------------------------------------------
# jsonl
# ---------------------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    """A log value as strict JSON: tensors and numpy scalars as numbers, NaN/inf as strings."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):  # not a one-element tensor / array
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": strict JSON has no such numbers
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


class JsonlReporter(Reporter):
    """Append every log to ``output_dir/metrics.jsonl``: one JSON object per line, flushed.

    Each line holds ``step`` and ``epoch`` plus the logged values. A resumed run appends to the
    same file (lines carry their step, so a reader can drop the ones a resume repeated); a line
    cut short by a crash is closed before anything new is written.
    """

    name = "jsonl"
    filename = "metrics.jsonl"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self._file: Any = None
        self._state: Any = None
        self.path: Optional[str] = None

    def setup(self, args: Any, state: Any, model: Any) -> None:
        self._state = state
        if self._file is not None:
            return
        self.path = os.path.join(prepare_output_dir(args.output_dir), self.filename)
        try:
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"jsonl reporter: cannot write {self.path} ({exc.strerror or exc}); check --output_dir") from None
        if _ends_mid_line(self.path):
            self._file.write("\n")

    def log(self, logs: dict[str, float], step: int) -> None:
        if self._file is None:
            return
        record: dict[str, Any] = {"step": step}
        epoch = getattr(self._state, "epoch", None)
        if "epoch" not in logs and epoch is not None:
            record["epoch"] = epoch
        record.update((str(k), _json_value(v)) for k, v in logs.items())
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _ends_mid_line(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"
