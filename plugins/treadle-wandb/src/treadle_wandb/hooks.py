"""treadle-wandb's registrations: the reporter (by string) and its ``wandb_*`` options.

Nothing here imports wandb: it is loaded only when ``--report_to`` names ``wandb`` (or ``all``).
Unset options fall back to wandb's own environment (``WANDB_PROJECT``, ``WANDB_ENTITY``,
``WANDB_TAGS``, ``WANDB_RUN_GROUP``, ``WANDB_LOG_MODEL``, ``WANDB_DIR``, ``WANDB_MODE``).
"""

from __future__ import annotations

from treadle import hookimpl

LOG_MODEL_CHOICES = ("false", "end", "checkpoint")


@hookimpl
def treadle_register_reporters(register):
    register("wandb", "treadle_wandb.reporter:WandbReporter", requires=("wandb",), description="Weights & Biases runs")


@hookimpl
def treadle_add_arguments(schema):
    schema.add("wandb_project", type=str, default=None,
               help="W&B project of the run; default WANDB_PROJECT, else --project")
    schema.add("wandb_entity", type=str, default=None, help="W&B team or user owning the project; default WANDB_ENTITY")
    schema.add("wandb_tags", type=str, default=None, help="comma-separated tags for the run; default WANDB_TAGS")
    schema.add("wandb_group", type=str, default=None, help="group the run with others (e.g. one per process); default WANDB_RUN_GROUP")
    schema.add("wandb_log_model", type=str, default=None, choices=LOG_MODEL_CHOICES,
               help="upload the model as an artifact: at the end, at each checkpoint, or not (default WANDB_LOG_MODEL, else false)")
    schema.add("wandb_dir", type=str, default=None, help="where wandb keeps its run files; default WANDB_DIR, else output_dir")

