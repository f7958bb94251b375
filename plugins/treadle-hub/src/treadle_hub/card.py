"""The model card (the repository's ``README.md``): what was trained, on what, how, and how well.

A hub shows the card as the model's page and reads its YAML header for search and widgets. It
is generated from what the run knows -- the arguments (credentials masked, local paths left out),
the task, the evaluation history and final metrics, the library versions -- at the moment of
each upload, so a checkpoint's card says "in progress" at its step and the final one has the
final numbers. The text depends only on those inputs (no timestamps), so uploading an unchanged
run again changes no file and makes no commit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from typing import Any, Iterable, Mapping, Optional

CARD_OPTIONS = ("model_name", "language", "license", "tags", "finetuned_from", "tasks", "dataset", "dataset_tags",
                "dataset_args")
"""Model-card fields ``Trainer.push_to_hub(**options)`` accepts (the seeds' names)."""

_PATH_FIELDS = {"output_dir", "logging_dir", "resume_from_checkpoint", "hub_token", "push_to_hub_token"}


def card_for_trainer(
    trainer: Any, *, repo_id: Optional[str] = None, state: Any = None, in_progress: bool = False,
    options: Optional[Mapping[str, Any]] = None,
) -> str:
    """The card of ``trainer``'s run (for uploads and ``Trainer.create_model_card``); ``state``
    defaults to the trainer's current one."""
    args, model = trainer.args, getattr(trainer, "model", None)
    return model_card(
        repo_id=repo_id or args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir)),
        args=args, state=state if state is not None else trainer.state, model=model, task=_task(args, model),
        components=_components(trainer), in_progress=in_progress, options=options,
    )


def model_card(
    *,
    repo_id: str,
    args: Any,
    state: Any,
    model: Any = None,
    task: Optional[tuple[str, str]] = None,
    components: Optional[Mapping[str, str]] = None,
    in_progress: bool = False,
    options: Optional[Mapping[str, Any]] = None,
) -> str:
    """The card's text. ``task`` is ``(name, description)``; ``components`` maps kind to the name
    the run used (backend, precision, strategy); ``options`` holds ``CARD_OPTIONS`` values."""
    options = dict(options or {})
    name = options.get("model_name") or repo_id.split("/")[-1]
    is_transformers = _is_transformers_model(model)
    lines = ["---", *_front_matter(options, task, is_transformers), "---", "", f"# {name}", ""]
    what = f"a `{type(model).__name__}` model" if model is not None else "a model"
    on = f" on the `{task[0]}` task ({task[1]})" if task and task[1] else (f" on the `{task[0]}` task" if task else "")
    lines.append(f"This is {what} trained with [treadle](https://pypi.org/project/treadle/){on}.")
    if options.get("finetuned_from"):
        lines.append(f"It was fine-tuned from `{options['finetuned_from']}`.")
    if options.get("dataset"):
        given = f" ({_listing(options['dataset_args'])})" if options.get("dataset_args") else ""
        lines.append(f"Training data: {_listing(options['dataset'])}{given}.")
    if in_progress:
        lines += ["", f"**Training in progress**: this upload is the model at step {state.global_step}."]
    lines += ["", *_results(state), *_history(state), *_hyperparameters(args, components), *_versions(is_transformers)]
    if is_transformers:
        lines += ["## Usage", "", "```python", "from transformers import AutoModel", "",
                  f'model = AutoModel.from_pretrained("{repo_id}")', "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _task(args: Any, model: Any) -> Optional[tuple[str, str]]:
    """``(name, description)`` of the task that built the model, or None (a Trainer made in Python).

    ``--task`` has a default, so its value alone does not say a task ran: the default counts only
    when the model's class comes from that task's module.
    """
    name = getattr(args, "task", None)
    if not name:
        return None
    from treadle.plugins import get_plugin_manager

    spec = get_plugin_manager().registry("task").get(name)
    module = (spec.target if spec is not None else name).partition(":")[0]
    default = next((f.default for f in dataclasses.fields(type(args)) if f.name == "task"), None)
    if name == default and type(model).__module__ != module:
        return None
    return name, (spec.description if spec is not None else "")


def _components(trainer: Any) -> dict[str, str]:
    specs = getattr(trainer, "component_specs", None) or {}
    return {kind: spec.name for kind, spec in specs.items()}


def _front_matter(options: Mapping[str, Any], task: Optional[tuple[str, str]], is_transformers: bool) -> list[str]:
    tags = ["treadle", *_as_list(options.get("tags"))]
    if task:
        tags.append(f"treadle-task-{task[0]}")
    meta: dict[str, Any] = {"library_name": "transformers" if is_transformers else "treadle"}
    for key in ("license", "language"):
        if options.get(key):
            meta[key] = options[key]
    if options.get("finetuned_from"):
        meta["base_model"] = options["finetuned_from"]
    datasets = _as_list(options.get("dataset_tags")) or _as_list(options.get("dataset"))
    if datasets:
        meta["datasets"] = datasets
    meta["tags"] = list(dict.fromkeys(tags))
    lines = []
    for key, value in meta.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {json.dumps(str(item))}" for item in value]
        else:
            lines.append(f"{key}: {json.dumps(str(value))}")  # a JSON string is a valid YAML scalar
    return lines


def _results(state: Any) -> list[str]:
    final = _final_metrics(state.log_history)
    if not final:
        return []
    rows = [f"| {key} | {_number(value)} |" for key, value in final.items()]
    return ["## Results", "", "At the last evaluation and at the end of training:", "", "| metric | value |",
            "| --- | --- |", *rows, ""]


def _final_metrics(history: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    final: dict[str, Any] = {}
    for entry in history:
        if any(str(k).startswith("eval_") for k in entry):
            final = {k: v for k, v in final.items() if not str(k).startswith("eval_")}
        for key, value in entry.items():
            if str(key).startswith("eval_") or key in ("train_loss", "epoch", "step"):
                final[key] = value
    skipped = ("_runtime", "_per_second")
    return {k: v for k, v in final.items() if not str(k).endswith(skipped)}


def _history(state: Any) -> list[str]:
    evals = [e for e in state.log_history if any(str(k).startswith("eval_") for k in e)]
    if not evals:
        return []
    losses = {e.get("step"): e["loss"] for e in state.log_history if "loss" in e}
    names = [k for k in dict.fromkeys(k for e in evals for k in e) if str(k).startswith("eval_")
             and not str(k).endswith(("_runtime", "_per_second"))]
    header = ["step", "epoch", "training loss", *names]
    rows = []
    for entry in evals:
        cells = [entry.get("step"), entry.get("epoch"), losses.get(entry.get("step")), *(entry.get(n) for n in names)]
        rows.append("| " + " | ".join(_number(c) for c in cells) + " |")
    return ["## Evaluation during training", "", "| " + " | ".join(header) + " |",
            "|" + " --- |" * len(header), *rows, ""]


def _hyperparameters(args: Any, components: Optional[Mapping[str, str]]) -> list[str]:
    rows = [f"| {kind} | {name} |" for kind, name in (components or {}).items()]
    current = args.to_dict() if hasattr(args, "to_dict") else {}  # credentials already masked
    derived = set(args.derived_fields()) if hasattr(args, "derived_fields") else set()
    for f in dataclasses.fields(type(args)) if dataclasses.is_dataclass(args) else ():
        name = f.name
        if name not in current or name in _PATH_FIELDS or name in derived or name == "plugin_options":
            continue
        value = current[name]
        if value == _default(f) or value is None:
            continue
        if isinstance(value, str) and os.path.isabs(value):
            continue  # a path on the machine that trained: of no use to a reader, and private
        rows.append(f"| {name} | {_value(value)} |")
    if not rows:
        return []
    return ["## Training arguments", "", "Everything that differs from treadle's defaults:", "",
            "| argument | value |", "| --- | --- |", *rows, ""]


def _versions(is_transformers: bool) -> list[str]:
    from treadle.__about__ import __version__ as treadle_version

    versions = [("treadle", treadle_version), ("torch", _version("torch")),
                ("huggingface_hub", _version("huggingface_hub")), ("Python", platform.python_version())]
    if is_transformers:
        versions.insert(1, ("transformers", _version("transformers")))
    return ["## Framework versions", "", *[f"- {name} {version}" for name, version in versions], ""]


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def _is_transformers_model(model: Any) -> bool:
    return model is not None and type(model).__module__.split(".")[0] == "transformers"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _listing(value: Any) -> str:
    return ", ".join(f"`{v}`" for v in _as_list(value))


def _value(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text.replace("|", "\\|")


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)
