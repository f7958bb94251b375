"""The ``tensorboard`` reporter: scalars at their global step, the arguments as text and hparams.

Every log is flushed to disk at once, so a crash loses nothing already logged. A resumed run
writes on in the same directory (kept in the checkpoint) with ``purge_step`` set to the step it
resumes from: TensorBoard then hides what the first attempt logged after that step, and the
curves join without a doubled stretch.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from treadle.components import Reporter
from treadle.errors import UsageError
from treadle.reporting import default_logging_dir, run_config, scalar_metrics


class TensorBoardReporter(Reporter):
    """Writes ``train/*``, ``eval/*`` and ``test/*`` scalars with torch's ``SummaryWriter``."""

    name = "tensorboard"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.writer: Any = None
        self.log_dir: Optional[str] = None

    def setup(self, args: Any, state: Any, model: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        if self.log_dir is None:
            self.log_dir = default_logging_dir(args)
        resumed_at = state.global_step + 1 if state.global_step else None  # the first step this attempt logs
        try:
            os.makedirs(self.log_dir, exist_ok=True)
            self.writer = SummaryWriter(log_dir=self.log_dir, purge_step=resumed_at)
        except OSError as exc:
            raise UsageError(
                f"tensorboard reporter: cannot write to {self.log_dir} ({exc.strerror or exc}); check --logging_dir"
            ) from None
        config = run_config(args)
        self.writer.add_text("args", "```\n" + json.dumps(config, indent=2) + "\n```", global_step=state.global_step)
        for summary in hparams(config, metric_dict={}):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def log(self, logs: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for name, value in scalar_metrics(logs).items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # the run directory across a resume -----------------------------------------------------------
    def state_dict(self) -> Optional[dict[str, Any]]:
        if self.log_dir is None:
            return None
        inside = os.path.relpath(self.log_dir, self.args.output_dir)
        if inside.startswith(os.pardir) or os.path.isabs(inside):
            return {"log_dir": os.path.abspath(self.log_dir)}
        return {"log_dir_in_output_dir": inside}  # output_dir may have moved since

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.args.logging_dir:  # an explicit --logging_dir of this run wins
            return
        if "log_dir_in_output_dir" in state:
            self.log_dir = os.path.join(self.args.output_dir, state["log_dir_in_output_dir"])
        elif "log_dir" in state:
            self.log_dir = state["log_dir"]
