"""The DeepSpeed config of a run: read it, fill its ``"auto"`` values, refuse contradictions.

A DeepSpeed config repeats numbers that treadle's arguments already hold (micro-batch size,
accumulation, clipping, learning rate, ...). Two sources for one number drift apart, so each
such key is either ``"auto"`` (filled here from the arguments), equal to the argument, or an
error naming both. At parse time (``hooks.py``) a value the config spells out is adopted by an
argument the user did not set; an argument set explicitly to something else is a contradiction.

Standard library only: the argument hooks use this module before torch or deepspeed load.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any, Optional

from treadle.errors import UsageError

AUTO = "auto"

ARGUMENT_KEYS: tuple[tuple[str, str], ...] = (
    ("train_micro_batch_size_per_gpu", "per_device_train_batch_size"),
    ("gradient_accumulation_steps", "gradient_accumulation_steps"),
    ("gradient_clipping", "max_grad_norm"),
    ("optimizer.params.lr", "learning_rate"),
    ("optimizer.params.eps", "adam_epsilon"),
    ("optimizer.params.weight_decay", "weight_decay"),
    ("scheduler.params.warmup_max_lr", "learning_rate"),
)
"""Config keys that mirror one argument each (``optimizer.params.betas`` mirrors two)."""

HALF_PRECISIONS = {"fp16": "fp16", "bf16": "bf16"}
"""treadle precision name -> the config section that turns the same mode on in the engine."""

QUIET_STEPS = 2**31 - 1
"""``steps_per_print`` unless the config sets it: treadle's reporters log, not DeepSpeed."""


def read_config(value: Any) -> dict[str, Any]:
    """The config given as ``--deepspeed``: a dict, a JSON object string, or a JSON file's path."""
    if isinstance(value, dict):
        return copy.deepcopy(value)
    if not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"--deepspeed: expected a JSON file path, a JSON object or a dict, got {type(value).__name__}")
    text = str(value).strip()
    source = "the JSON string"
    if not text.startswith("{"):
        source = text
        try:
            with open(text, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise UsageError(f"--deepspeed {value}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--deepspeed: {source} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UsageError(f"--deepspeed: {source} must hold a JSON object, not {type(config).__name__}")
    return config


def lookup(config: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` (None where a section or the key is missing)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _assign(config: dict[str, Any], key: str, value: Any) -> None:
    *sections, last = key.split(".")
    node = config
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def _contradiction(key: str, value: Any, argument: str, current: Any) -> str:
    return (
        f"deepspeed config: {key} is {json.dumps(value)} but --{argument} is {current}; make them equal, "
        f'or write "auto" in the config to take the argument\'s value'
    )


def _mirrored(config: dict[str, Any], args: Any) -> list[tuple[str, Any, str, Any]]:
    """``(key, config value, argument, argument value)`` for each set (non-auto) mirrored key."""
    found = []
    for key, argument in ARGUMENT_KEYS:
        if key.startswith(("optimizer.", "scheduler.")) and not isinstance(config.get(key.split(".")[0]), dict):
            continue
        value = lookup(config, key)
        if value is not None and value != AUTO:
            found.append((key, value, argument, getattr(args, argument)))
    betas = lookup(config, "optimizer.params.betas")
    if isinstance(betas, (list, tuple)) and len(betas) == 2:
        for value, argument in zip(betas, ("adam_beta1", "adam_beta2")):
            if value != AUTO:
                found.append(("optimizer.params.betas", value, argument, getattr(args, argument)))
    return found


def adopt_config_values(args: Any, explicit: frozenset[str], config: dict[str, Any]) -> list[str]:
    """At parse time: arguments the user left alone take the config's numbers; return contradictions.

    Each adopted value is recorded with the key it came from (``TrainingArguments.set_derived``),
    so ``treadle args`` says "implied by train_micro_batch_size_per_gpu in the deepspeed config
    ds.json" instead of calling the number a default.
    """
    problems = []
    where = _config_name(args.deepspeed)
    for key, value, argument, current in _mirrored(config, args):
        if _same(value, current if current is not None else 0.0):
            continue
        if argument in explicit:
            problems.append(_contradiction(key, value, argument, current))
        else:
            args.set_derived(argument, value, f"implied by {key} in {where}")
    return problems


def _config_name(value: Any) -> str:
    """How ``treadle args`` names the config a value came from: its file when it is one."""
    if isinstance(value, (str, os.PathLike)) and not str(value).strip().startswith("{"):
        return f"the deepspeed config {value}"
    return "the deepspeed config"


def engine_config(
    config: dict[str, Any],
    args: Any,
    *,
    world_size: int,
    precision: Optional[str],
    hidden_size: Optional[int],
    num_training_steps: Optional[int],
    client_optimizer: bool,
) -> dict[str, Any]:
    """The config handed to ``deepspeed.initialize``: every ``"auto"`` filled, every mirrored key checked.

    ``world_size`` counts the data-parallel processes (the ranks of a sequence-parallel block
    share one batch, as DeepSpeed's ``train_batch_size`` counts it).

    Raises ``UsageError`` naming the key for a contradiction or an ``"auto"`` nothing can fill.
    """
    config = copy.deepcopy(config)
    problems = [_contradiction(*item) for item in _mirrored(config, args) if not _same(item[1], item[3] or 0.0)]
    for key, argument in ARGUMENT_KEYS:
        if lookup(config, key) == AUTO:
            value = getattr(args, argument)
            _assign(config, key, 0.0 if key == "gradient_clipping" and not value else value)
    if lookup(config, "optimizer.params.betas") == AUTO:
        _assign(config, "optimizer.params.betas", [args.adam_beta1, args.adam_beta2])
    for key, argument in ARGUMENT_KEYS[:3]:  # the batch layout: DeepSpeed needs it even when the config is silent
        if lookup(config, key) is None:
            value = getattr(args, argument)
            _assign(config, key, 0.0 if key == "gradient_clipping" and not value else value)
    micro, accumulation = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
    total = micro * accumulation * world_size
    given = config.get("train_batch_size")
    if given in (None, AUTO):
        config["train_batch_size"] = total
    elif given != total:
        problems.append(
            f"deepspeed config: train_batch_size is {given} but --per_device_train_batch_size {micro} x "
            f"--gradient_accumulation_steps {accumulation} x {world_size} data-parallel process(es) is {total}; make them "
            'agree, or write "auto"'
        )
    problems += _fill_precision(config, precision)
    _fill_scheduler(config, args, num_training_steps)
    _fill_buckets(config, hidden_size)
    if problems:
        raise UsageError("\n".join(problems))
    config.setdefault("steps_per_print", QUIET_STEPS)
    if client_optimizer:
        if isinstance(config.get("optimizer"), dict):
            raise UsageError(
                "deepspeed config: it has an optimizer section, and the Trainer was given an optimizer too; "
                "remove one of them"
            )
        config.setdefault("zero_allow_untested_optimizer", True)  # torch's optimizers are fine under ZeRO
        config.setdefault("zero_force_ds_cpu_optimizer", False)  # offload with a torch optimizer: allowed, if slower
    left = _auto_keys(config)
    if left:
        raise UsageError(
            f"deepspeed config: {', '.join(left)} is \"auto\" but treadle has no argument to fill it from; "
            "give a value in the config"
        )
    return config


def _fill_precision(config: dict[str, Any], precision: Optional[str]) -> list[str]:
    """``fp16.enabled`` / ``bf16.enabled`` follow ``--precision`` (``--fp16`` / ``--bf16``)."""
    problems = []
    for name, section in HALF_PRECISIONS.items():
        wanted = precision == name
        block = config.get(section)
        if section == "bf16" and block is None and isinstance(config.get("bfloat16"), dict):
            block = config["bfloat16"]  # DeepSpeed's older spelling
        enabled = block.get("enabled", AUTO) if isinstance(block, dict) else None
        if enabled == AUTO or (enabled is None and wanted):
            target = block if isinstance(block, dict) else config.setdefault(section, {})
            target["enabled"] = wanted
        elif enabled is False and wanted:
            problems.append(f"deepspeed config: {section}.enabled is false but the precision is {precision}; "
                            f'set it to true or "auto", or drop --{precision}')
        elif enabled is True and precision in HALF_PRECISIONS and not wanted:
            problems.append(f"deepspeed config: {section}.enabled is true but the precision is {precision}; "
                            f'set it to false or "auto", or choose --precision {section}')
    return problems


def _fill_scheduler(config: dict[str, Any], args: Any, num_training_steps: Optional[int]) -> None:
    params = lookup(config, "scheduler.params")
    if not isinstance(params, dict):
        return
    if params.get("warmup_min_lr") == AUTO:
        params["warmup_min_lr"] = 0.0
    if num_training_steps is not None:
        if params.get("warmup_num_steps") == AUTO:
            params["warmup_num_steps"] = args.get_warmup_steps(num_training_steps)
        if params.get("total_num_steps") == AUTO:
            params["total_num_steps"] = num_training_steps


def _fill_buckets(config: dict[str, Any], hidden_size: Optional[int]) -> None:
    """ZeRO's bucket sizes scale with the model's hidden size; without one, DeepSpeed's defaults apply."""
    zero = config.get("zero_optimization")
    if not isinstance(zero, dict):
        return
    sizes = {}
    if hidden_size:
        sizes = {
            "reduce_bucket_size": hidden_size * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "stage3_param_persistence_threshold": 10 * hidden_size,
        }
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        if zero.get(key) == AUTO:
            if key in sizes:
                zero[key] = sizes[key]
            else:
                del zero[key]


def _auto_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _auto_keys(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == AUTO else []


def zero_stage(config: dict[str, Any]) -> int:
    """The ZeRO stage the config asks for (0 when it has no ``zero_optimization`` section)."""
    stage = lookup(config, "zero_optimization.stage")
    return int(stage) if isinstance(stage, (int, float)) and not isinstance(stage, bool) else 0


__all__ = ["AUTO", "adopt_config_values", "engine_config", "lookup", "read_config", "zero_stage"]
