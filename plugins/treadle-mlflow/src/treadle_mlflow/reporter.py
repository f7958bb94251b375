"""The ``mlflow`` reporter: one MLflow run per training run, through ``MlflowClient`` and an explicit run id.

It never uses MLflow's global "active run", so it neither ends nor hijacks a run the user's own
code started (that run can be the parent of a nested one). An HTTP tracking server is probed
with a short timeout before anything else: MLflow's client retries for minutes, which would turn
a typo in the URI into a silent hang. For the same reason this process's MLflow HTTP requests
retry once with a short timeout unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` /
``MLFLOW_HTTP_REQUEST_TIMEOUT`` say otherwise: a server that dies mid-training costs each later
log a few seconds at most (one warning, training goes on), not minutes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any, Optional

from treadle.components import Reporter
from treadle.errors import UsageError
from treadle.markers import hookimpl
from treadle.reporting import model_files, run_config, scalar_metrics, unreachable

logger = logging.getLogger("treadle")

_INVALID_NAME_CHARS = re.compile(r"[^/\w.\- :]")
_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
_TRUE = ("1", "true", "yes", "on")


def metric_key(name: str) -> str:
    """``name`` with the characters MLflow refuses in a metric key replaced by ``_``."""
    return _INVALID_NAME_CHARS.sub("_", name).lstrip("/") or "_"


def parse_tags(text: Optional[str]) -> dict[str, str]:
    """``{"a": "1"}`` (JSON) or ``a=1,b=2``; a value that is neither is a UsageError naming the option."""
    if not text:
        return {}
    text = text.strip()
    if text.startswith("{"):
        try:
            return {str(k): str(v) for k, v in json.loads(text).items()}
        except (ValueError, AttributeError) as exc:
            raise UsageError(f"--mlflow_tags / MLFLOW_TAGS: not a JSON object ({exc})") from None
    pairs = [item.partition("=") for item in text.split(",") if item.strip()]
    if any(not sep or not key.strip() for key, sep, _ in pairs):
        raise UsageError(f"--mlflow_tags / MLFLOW_TAGS: expected key=value pairs separated by commas, got {text!r}")
    return {key.strip(): value.strip() for key, _, value in pairs}


def _option(args: Any, name: str, env: str) -> Optional[str]:
    value = getattr(args, name, None)
    return value if value not in (None, "") else os.environ.get(env) or None


def _artifact_mode(args: Any) -> str:
    value = getattr(args, "mlflow_log_artifacts", None)
    if value is None:  # transformers' variable, kept so existing setups carry over
        value = "end" if os.environ.get("HF_MLFLOW_LOG_ARTIFACTS", "").lower() in _TRUE else "false"
    return value


class MlflowReporter(Reporter):
    """Params (batched, values cut to MLflow's limit), metrics by step, artifacts, FINISHED / FAILED at the end."""

    name = "mlflow"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.client: Any = None
        self.run_id: Optional[str] = None
        self.tracking_uri: Optional[str] = None
        self.artifacts = _artifact_mode(args)

    # opening -----------------------------------------------------------------------------------
    def setup(self, args: Any, state: Any, model: Any) -> None:
        self.tracking_uri = _option(args, "mlflow_tracking_uri", "MLFLOW_TRACKING_URI")
        if self.tracking_uri and self.tracking_uri.startswith(("http://", "https://")):
            reason = unreachable(self.tracking_uri.rstrip("/") + "/health")
            if reason is not None:
                raise UsageError(
                    f"mlflow: cannot reach the tracking server {self.tracking_uri} ({reason}); start it, "
                    "or point --mlflow_tracking_uri / MLFLOW_TRACKING_URI at a running one"
                )
        for name, value in _CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
        tags = parse_tags(_option(args, "mlflow_tags", "MLFLOW_TAGS"))
        try:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            self.run_id = self.run_id or _option(args, "mlflow_run_id", "MLFLOW_RUN_ID")
            if self.run_id:
                self._reopen(self.run_id, tags)
            else:
                self._create(args, tags)
            self._log_params(run_config(args, model))
        except UsageError:
            raise
        except Exception as exc:  # the store refused: wrong URI scheme, permissions, an unknown run id
            raise UsageError(
                f"mlflow: could not start a run at {self.tracking_uri or 'the default tracking URI'} "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from None

    def _create(self, args: Any, tags: dict[str, str]) -> None:
        experiment = _option(args, "mlflow_experiment", "MLFLOW_EXPERIMENT_NAME")
        if experiment:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        else:
            experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or "0"  # MLflow's Default experiment
        parent = self._parent_run_id(args)
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(experiment_id, run_name=args.run_name or None, tags=tags)
        self.run_id = run.info.run_id

    def _parent_run_id(self, args: Any) -> Optional[str]:
        parent = _option(args, "mlflow_parent_run_id", "MLFLOW_PARENT_RUN_ID")
        nested = getattr(args, "mlflow_nested", None)
        if nested is None:
            nested = os.environ.get("MLFLOW_NESTED_RUN", "").lower() in _TRUE
        if parent or not nested:
            return parent
        import mlflow

        active = mlflow.active_run()
        if active is None:
            raise UsageError("--mlflow_nested: there is no active MLflow run to nest under; set --mlflow_parent_run_id")
        return active.info.run_id

    def _reopen(self, run_id: str, tags: dict[str, str]) -> None:
        """Continue an existing run (a resume, or --mlflow_run_id): RUNNING again until this run ends."""
        self.client.get_run(run_id)  # an unknown id fails here, with MLflow's message
        self.client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def _log_params(self, params: dict[str, Any]) -> None:
        """Params in batches of MLflow's maximum; an existing run (resume) gets only the ones it lacks.

        MLflow refuses to change a logged param; the values of a resumed run that differ (e.g.
        ``resume_from_checkpoint``) are reported at info level instead.
        """
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        logged = self.client.get_run(self.run_id).data.params
        fresh = {}
        for key, value in params.items():
            text = str(value)[:MAX_PARAM_VAL_LENGTH]
            if key not in logged:
                fresh[key] = text
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != str(v)[:MAX_PARAM_VAL_LENGTH])
        if changed:
            logger.info("mlflow: run %s keeps its first values of %s (MLflow params cannot change)", self.run_id, ", ".join(changed))
        items = [Param(key, value) for key, value in fresh.items()]
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + MAX_PARAMS_TAGS_PER_BATCH])

    # the run -------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(name), value, now, step) for name, value in scalar_metrics(logs).items()]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])

    @hookimpl
    def treadle_on_save(self, checkpoint_dir: str) -> None:
        if self.client is not None and self.artifacts == "checkpoint":
            self._upload(lambda: self.client.log_artifacts(
                self.run_id, checkpoint_dir, artifact_path=f"checkpoints/{os.path.basename(checkpoint_dir)}"
            ), checkpoint_dir)

    def _upload(self, send: Any, what: str) -> None:
        try:
            send()
        except Exception as exc:  # an upload never stops the training
            logger.warning("mlflow: could not upload %s (%s: %s); training goes on", what, type(exc).__name__, _first_line(exc))

    # closing ---------------------------------------------------------------------------------------
    def finish(self) -> None:
        if self.client is None:
            return
        if self.artifacts == "end":
            files = model_files(self.args.output_dir)
            for path in files:
                self._upload(lambda path=path: self.client.log_artifact(self.run_id, path, artifact_path="model"), path)
            if not files:
                logger.info("mlflow: no saved model in %s to upload (call save_model first)", self.args.output_dir)
        self._terminate("FINISHED")

    def fail(self, exception: BaseException) -> None:
        self._terminate("KILLED" if isinstance(exception, KeyboardInterrupt) else "FAILED")

    def _terminate(self, status: str) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.set_terminated(self.run_id, status=status)

    # the run id across a resume --------------------------------------------------------------------
    def state_dict(self) -> Optional[dict[str, Any]]:
        return {"run_id": self.run_id} if self.run_id else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or self.run_id


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
