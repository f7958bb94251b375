"""treadle: a PyTorch training framework made of a small core and plugins.

Importing this package is cheap: ``Trainer`` and ``TrainingArguments`` are loaded on first
access, so the command line can start without importing torch.
"""

from __future__ import annotations

from typing import Any

from treadle.__about__ import __version__
from treadle.errors import CheckpointError, PluginError, TreadleError, UsageError
from treadle.markers import hookimpl

_LAZY = {
    "Trainer": "treadle.trainer",
    "TrainingArguments": "treadle.args",
    "Seq2SeqTrainer": "treadle.seq2seq",
    "Seq2SeqTrainingArguments": "treadle.seq2seq",
    "BestRun": "treadle.search",
    "SearchBackend": "treadle.components",
    "TrainerState": "treadle.state",
    "TrainerControl": "treadle.state",
    "TreadleArgumentParser": "treadle.config",
    "TaskParts": "treadle.components",
    "Backend": "treadle.components",
    "Precision": "treadle.components",
    "Strategy": "treadle.components",
    "MicroBatch": "treadle.components",
    "Reporter": "treadle.components",
    "HubSync": "treadle.components",
    "get_plugin_manager": "treadle.plugins",
    "TrainerCallback": "treadle.callbacks",
    "EarlyStoppingCallback": "treadle.callbacks",
    "EvalPrediction": "treadle.evaluation",
    "PredictionOutput": "treadle.evaluation",
    "TrainOutput": "treadle.evaluation",
    "DataCollatorWithPadding": "treadle.data",
    "default_data_collator": "treadle.data",
}

__all__ = ["__version__", "hookimpl", "TreadleError", "UsageError", "PluginError", "CheckpointError", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'treadle' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
