"""The ``wandb`` reporter: one W&B run per training run, resumed into the same run after a restart.

Metrics are logged against ``train/global_step`` (declared as their x-axis), not wandb's own
step counter: after a resume from an earlier checkpoint the steps repeat, which wandb's counter
would refuse. The run id is kept in each checkpoint, so ``--resume_from_checkpoint`` continues
the run that wrote it (``resume="allow"``). ``WANDB_MODE=offline`` works as wandb documents it
(files under ``<dir>/wandb/offline-run-*``, upload later with ``wandb sync``).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any, Optional

from treadle.components import Reporter
from treadle.errors import UsageError
from treadle.markers import hookimpl
from treadle.reporting import model_files, run_config, scalar_metrics, unreachable

logger = logging.getLogger("treadle")

STEP_METRIC = "train/global_step"
_LOG_MODEL_ALIASES = {"true": "end", "1": "end", "end": "end", "checkpoint": "checkpoint"}


def log_model_mode(args: Any) -> str:
    """``end``, ``checkpoint`` or ``false`` from ``--wandb_log_model``, else ``WANDB_LOG_MODEL``."""
    value = getattr(args, "wandb_log_model", None) or os.environ.get("WANDB_LOG_MODEL", "false")
    return _LOG_MODEL_ALIASES.get(str(value).strip().lower(), "false")


class WandbReporter(Reporter):
    """Config = the sanitized arguments; metrics with their step; the run marked failed when training raises."""

    name = "wandb"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.run: Any = None
        self.run_id: Optional[str] = None
        self.log_model = log_model_mode(args)

    # opening -----------------------------------------------------------------------------------
    def setup(self, args: Any, state: Any, model: Any) -> None:
        import wandb

        _check_reachable()
        tags = getattr(args, "wandb_tags", None)
        directory = getattr(args, "wandb_dir", None) or os.environ.get("WANDB_DIR") or args.output_dir
        os.makedirs(directory, exist_ok=True)
        config = run_config(args, model)
        if self.run_id:
            _hand_over(self.run_id)
        try:
            self.run = wandb.init(
                project=getattr(args, "wandb_project", None) or os.environ.get("WANDB_PROJECT") or args.project,
                entity=getattr(args, "wandb_entity", None),
                name=args.run_name or None,
                tags=[t.strip() for t in tags.split(",") if t.strip()] if tags else None,
                group=getattr(args, "wandb_group", None),
                dir=directory,
                id=self.run_id,
                resume="allow" if self.run_id else None,
                config=config,
                allow_val_change=True,
                reinit="create_new",  # runs of other Trainers in this process stay untouched
            )
        except Exception as exc:  # wandb's own errors (no API key, bad entity) end the run before it starts
            raise UsageError(
                f"wandb: could not start a run ({type(exc).__name__}: {exc}); log in with `wandb login`, "
                "or set WANDB_MODE=offline to log locally"
            ) from None
        self.run_id = self.run.id
        _open_runs[self.run_id] = self
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)

    # the run -------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], step: int) -> None:
        if self.run is None:
            return
        metrics = scalar_metrics(logs)
        if metrics:
            self.run.log({**metrics, STEP_METRIC: step})

    @hookimpl
    def treadle_on_save(self, state: Any, checkpoint_dir: str) -> None:
        if self.run is not None and self.log_model == "checkpoint":
            self._upload(checkpoint_dir, [os.path.join(checkpoint_dir, n) for n in sorted(os.listdir(checkpoint_dir))],
                         alias=os.path.basename(checkpoint_dir), step=state.global_step)

    def _upload(self, folder: str, files: list[str], *, alias: str, step: int) -> None:
        """Log ``files`` as a version of the run's model artifact (wandb copies them at once, then uploads)."""
        import wandb

        try:
            artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata={"global_step": step})
            for path in files:
                if os.path.isdir(path):
                    artifact.add_dir(path, name=os.path.basename(path))
                else:
                    artifact.add_file(path)
            self.run.log_artifact(artifact, aliases=[alias, "latest"])
        except Exception as exc:  # an upload never stops the training
            logger.warning("wandb: could not upload %s as an artifact (%s: %s); training goes on", folder, type(exc).__name__, exc)

    # closing ---------------------------------------------------------------------------------------
    def finish(self) -> None:
        if self.run is None:
            return
        if self.log_model == "end":
            files = model_files(self.args.output_dir)
            if files:
                self._upload(self.args.output_dir, files, alias="final", step=_last_step(self.run))
            else:
                logger.info("wandb: no saved model in %s to upload (call save_model first)", self.args.output_dir)
        run, self.run = self.run, None
        run.finish()

    def fail(self, exception: BaseException) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=130 if isinstance(exception, KeyboardInterrupt) else 1)

    # the run id across a resume --------------------------------------------------------------------
    def state_dict(self) -> Optional[dict[str, Any]]:
        return {"run_id": self.run_id} if self.run_id else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or self.run_id


_open_runs: "weakref.WeakValueDictionary[str, WandbReporter]" = weakref.WeakValueDictionary()
"""Run id -> the reporter of this process that has it open."""


def _hand_over(run_id: str) -> None:
    """Finish this process's open run ``run_id`` (an earlier Trainer's): a resume continues it here.

    wandb refuses to open a run id that is still open in the same process.
    """
    holder = _open_runs.pop(run_id, None)
    if holder is not None and holder.run is not None:
        holder._active = False
        run, holder.run = holder.run, None
        run.finish()


def _last_step(run: Any) -> int:
    try:
        return int(run.summary.get(STEP_METRIC, 0))
    except Exception:  # noqa: BLE001 - metadata only
        return 0


def _check_reachable() -> None:
    """Online mode: the W&B server must answer within seconds (wandb itself waits up to 90 s)."""
    mode = (os.environ.get("WANDB_MODE") or "online").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    reason = unreachable(base)
    if reason is not None:
        raise UsageError(
            f"wandb: cannot reach {base} ({reason}); check the network or WANDB_BASE_URL, "
            "or set WANDB_MODE=offline to log locally and `wandb sync` later"
        )
