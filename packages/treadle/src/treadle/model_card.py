"""The plain model card ``Trainer.create_model_card`` writes when no plugin renders one.

A README.md with YAML front matter (the keys the Hub reads: language, license, tags, datasets,
base_model) and sections for what was trained, how, how well, and with which versions.
"""

from __future__ import annotations

import json
import platform
from typing import Any

from treadle.__about__ import __version__

_FRONT_MATTER_KEYS = {"language": "language", "license": "license", "tags": "tags", "dataset_tags": "datasets",
                      "finetuned_from": "base_model"}


def plain_model_card(trainer: Any, details: dict[str, Any]) -> str:
    args = trainer.args
    name = details.get("model_name") or _folder_name(args.output_dir)
    front = {"library_name": "treadle"}
    for key, card_key in _FRONT_MATTER_KEYS.items():
        if details.get(key) is not None:
            value = details[key]
            front[card_key] = [value] if card_key in ("tags", "datasets") and isinstance(value, str) else value
    lines = ["---", *(f"{k}: {json.dumps(v)}" for k, v in front.items()), "---", "", f"# {name}", ""]
    model = type(getattr(trainer, "model", None)).__name__
    trained_on = details.get("dataset") or args.task
    lines.append(f"A `{model}` trained with treadle {__version__}" + (f" on {trained_on}." if trained_on else "."))
    if details.get("finetuned_from"):
        lines.append(f"Fine-tuned from `{details['finetuned_from']}`.")
    metrics = _final_metrics(trainer)
    if metrics:
        lines += ["", "## Results", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_number(v)} |" for k, v in sorted(metrics.items())]
    lines += ["", "## Training arguments", "", "| argument | value |", "| --- | --- |"]
    defaults = type(args)(output_dir=args.output_dir).to_dict() if _rebuildable(args) else {}
    changed = {k: v for k, v in args.to_sanitized_dict().items() if defaults.get(k, object()) != v}
    lines += [f"| {k} | `{json.dumps(v, default=str)}` |" for k, v in sorted(changed.items()) if k != "output_dir"]
    lines += ["", "## Versions", "", f"- treadle {__version__}", f"- Python {platform.python_version()}"]
    try:
        import torch

        lines.append(f"- torch {torch.__version__}")
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return "\n".join(lines) + "\n"


def _final_metrics(trainer: Any) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for entry in getattr(trainer.state, "log_history", []):
        metrics.update({k: v for k, v in entry.items() if k.startswith(("eval_", "train_loss")) and isinstance(v, (int, float))})
    return metrics


def _rebuildable(args: Any) -> bool:
    try:
        type(args)(output_dir=args.output_dir)
    except Exception:
        return False
    return True


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _folder_name(path: str) -> str:
    import os

    return os.path.basename(os.path.normpath(path)) or "model"
