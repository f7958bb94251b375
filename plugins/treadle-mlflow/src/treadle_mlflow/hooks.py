"""treadle-mlflow's registrations: the reporter (by string) and its ``mlflow_*`` options.

Nothing here imports mlflow: it is loaded only when ``--report_to`` names ``mlflow`` (or ``all``).
Unset options fall back to MLflow's environment (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``,
``MLFLOW_RUN_ID``, ``MLFLOW_TAGS``, ``MLFLOW_NESTED_RUN``, ``MLFLOW_PARENT_RUN_ID``).
"""

from __future__ import annotations

from treadle import hookimpl

ARTIFACT_CHOICES = ("false", "end", "checkpoint")


@hookimpl
def treadle_register_reporters(register):
    register("mlflow", "treadle_mlflow.reporter:MlflowReporter", requires=("mlflow",), description="MLflow tracking runs")


@hookimpl
def treadle_add_arguments(schema):
    schema.add("mlflow_tracking_uri", type=str, default=None,
               help="tracking server or store (http://host:5000, sqlite:///mlflow.db); default MLFLOW_TRACKING_URI")
    schema.add("mlflow_experiment", type=str, default=None,
               help="experiment name, created if missing; default MLFLOW_EXPERIMENT_NAME, else MLflow's default experiment")
    schema.add("mlflow_tags", type=str, default=None,
               help="run tags as a JSON object or key=value,key=value; default MLFLOW_TAGS (JSON)")
    schema.add("mlflow_run_id", type=str, default=None,
               help="log into this existing run instead of a new one; default MLFLOW_RUN_ID")
    schema.add("mlflow_nested", type=bool, default=None,
               help="make the run a child of --mlflow_parent_run_id, else of the active MLflow run; default MLFLOW_NESTED_RUN")
    schema.add("mlflow_parent_run_id", type=str, default=None,
               help="parent of a nested run (implies --mlflow_nested); default MLFLOW_PARENT_RUN_ID")
    schema.add("mlflow_log_artifacts", type=str, default=None, choices=ARTIFACT_CHOICES,
               help="upload the saved model when the run ends, every checkpoint, or nothing (default false)")
