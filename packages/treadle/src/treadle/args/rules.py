"""Normalisation, implications and validation rules for :class:`treadle.args.TrainingArguments`.

Kept apart from ``args.py`` so the schema (what the fields are) and the rules (how
they relate) can each be read on their own. Everything here works on an
already-constructed arguments object through plain attribute access, so this
module never imports ``args.py`` and, like it, uses the standard library only:
``treadle --help`` must not pay for torch.

The pipeline run by ``TrainingArguments.__post_init__`` is::

    coerce()        config files and env vars give strings; turn them into the annotated types
    apply_aliases() move deprecated names to their replacements, with a FutureWarning
    normalise()     one canonical shape per field (lists, parsed JSON, whole step counts)
    derive()        fill unset values from the ones the user gave, recording why
    check()         every rule; returns all problems at once instead of stopping at the first

``derive`` never fails: when the user's choices contradict each other it leaves the
values alone and ``check`` reports the contradiction, so calling ``validate()``
after mutating fields by hand finds the same problems as construction does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import typing
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Union

from treadle import parallelism
from treadle.catalog import get_catalog

# --------------------------------------------------------------------------- name tables
# Closed sets of values, taken from the seed documents. Open sets (optimizer names,
# backends, precisions, strategies) belong to the plugin registries, which check them.

INTERVAL_STRATEGIES = ("no", "steps", "epoch")
SAVE_STRATEGIES = ("no", "steps", "epoch", "best")
HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50, "passive": -1}
HALF_PRECISION_BACKENDS = ("auto", "cuda_amp", "apex", "cpu_amp")
FP16_OPT_LEVELS = ("O0", "O1", "O2", "O3")
DDP_BACKENDS = ("nccl", "mpi", "ccl", "gloo", "hccl")
XPU_BACKENDS = ("mpi", "ccl", "gloo")
FSDP_OPTIONS = ("full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2", "no_shard", "offload", "auto_wrap")
DEBUG_OPTIONS = ("underflow_overflow", "tpu_metrics_debug")
METRIC_INPUTS = ("inputs", "loss")
TOKENS_SEEN_MODES = ("all", "non_padding", "no")
NAN_INF_POLICIES = ("warn", "skip_step", "halt")

# Field names whose values must never be printed, logged or written to a config dump.
_SECRET = re.compile(r"(_token$|^token$|secret|password|api_key)")


def is_secret(name: str) -> bool:
    """True for fields (core or plugin) that hold credentials, e.g. ``hub_token``."""
    return bool(_SECRET.search(name))


# Step counts that accept a fraction of the total number of training steps.
STEP_FIELDS = ("logging_steps", "eval_steps", "save_steps", "warmup_steps")
# Fields holding a JSON object, given inline (dict or JSON text) or as a path to a JSON file.
JSON_FIELDS = (
    "lr_scheduler_kwargs",
    "fsdp_config",
    "deepspeed",
    "accelerator_config",
    "parallelism_config",
    "gradient_checkpointing_kwargs",
    "liger_kernel_config",
)


# Fields where None (as transformers accepts it) stands for a value: output_dir=None is v5's default.
NONE_MEANS: dict[str, Callable[[], Any]] = {"output_dir": lambda: "trainer_output", "plugin_options": dict}


# --------------------------------------------------------------------------- helpers


def record(args, name: str, value: Any, reason: str) -> None:
    """Set a value the user did not give, remembering what they gave and why it changed.

    The received value is kept so that ``set_*`` helpers can re-derive from it when
    the fields it depended on change.
    """
    received = args.__dict__["_received"]
    if name not in received:
        received[name] = getattr(args, name)
    object.__setattr__(args, name, value)
    args.__dict__["_derived"][name] = reason
    args.__dict__["_derived_values"][name] = value


def _split_words(value) -> list[str]:
    """A list of option strings from a list, or a space/comma separated string."""
    if value is None or value is False:
        return []
    if isinstance(value, str):
        value = [value]
    words: list[str] = []
    for item in value:
        words.extend(w for w in re.split(r"[\s,]+", str(item)) if w)
    return words


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_value(value, name: str = "") -> str:
    """``repr`` for a message, with credentials hidden: a secret field's value, a secret key's value."""
    if value is not None and name and is_secret(name):
        return "***"
    if isinstance(value, dict):
        return repr({k: "***" if isinstance(k, str) and is_secret(k) and v is not None else v for k, v in value.items()})
    return repr(value)


_fmt = format_value


def _strip_optional(tp):
    """``Optional[X]`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) is Union:
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(members) < len(typing.get_args(tp))
        if len(members) == 1:
            return members[0], optional
        return Union[tuple(members)], optional  # noqa: UP007  (built at runtime)
    return tp, False


# --------------------------------------------------------------------------- 1. coerce

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _coerce_scalar(kind, value):
    """Convert ``value`` to ``kind`` (bool/int/float/str) or raise ValueError."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("expected true or false")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("expected a whole number, got a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value.strip())
            with contextlib.suppress(ValueError):
                number = float(value)  # "1e3" from a YAML file
                if number.is_integer():
                    return int(number)
        raise ValueError("expected a whole number")
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value.strip())  # YAML 1.1 reads 5e-5 as a string
        if isinstance(value, (int, float)) and math.isfinite(value):
            return value
        raise ValueError("expected a finite number")
    if kind is str:
        if isinstance(value, str):
            return value
        if _is_number(value):
            return str(value)
        raise ValueError("expected a string")
    return value


def coerce(args, hints: dict[str, Any]) -> list[str]:
    """Bring every field to its annotated type, so the rules can trust what they read.

    Values from the command line arrive typed, but config files and the Python API
    may hand over ``"5e-5"``, ``"true"`` or ``1`` for a bool; accept what is
    unambiguous and report the rest.
    """
    problems = []
    for f in dataclasses.fields(args):
        tp, optional = _strip_optional(hints[f.name])
        value = getattr(args, f.name)
        if value is None and f.name in NONE_MEANS:
            object.__setattr__(args, f.name, NONE_MEANS[f.name]())
            continue
        if value is None and (optional or f.name in JSON_FIELDS):
            continue
        try:
            if tp in (bool, int, float, str):
                new = _coerce_scalar(tp, value)
                if tp is float and f.name not in STEP_FIELDS and isinstance(new, int):
                    new = float(new)
            elif typing.get_origin(tp) is list:
                if value is None:
                    new = []
                elif isinstance(value, (str, list, tuple)):
                    new = value  # split by normalise(), which knows each field's rules
                elif isinstance(value, bool) and f.name in ("fsdp", "sharded_ddp"):
                    new = value
                else:
                    raise ValueError("expected a list of strings")
            elif tp is dict:
                new = _coerce_json_dict(value, allow_path=False)
            else:
                new = value
        except ValueError as exc:
            problems.append(f"{f.name}: {exc} (got {_fmt(value, f.name)})")
            continue
        object.__setattr__(args, f.name, new)
    return problems


def _coerce_json_dict(value, allow_path: bool):
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
            return parsed
        if allow_path and text:
            return text
    raise ValueError("expected a JSON object" + (" or the path of a JSON file" if allow_path else ""))


# --------------------------------------------------------------------------- 2. aliases


def _warn_alias(old: str, new: str, how: str = "") -> None:
    warnings.warn(
        f"'{old}' is deprecated and will be removed; use '{new}' instead{how}.",
        FutureWarning,
        stacklevel=5,
    )


def _differs_from_default(args, name: str, defaults: dict[str, Any]) -> bool:
    return getattr(args, name) != defaults[name]


def apply_aliases(args, aliases: dict[str, str], defaults: dict[str, Any]) -> list[str]:
    """Move each deprecated field that was given to its replacement.

    A deprecated name and its replacement both given with different values is an
    error: silently preferring one would hide a mistake in a config file.
    """
    problems: list[str] = []

    def move(old, new, converted):
        current = getattr(args, new)
        if _differs_from_default(args, new, defaults) and current != converted:
            problems.append(
                f"{old}: deprecated alias of {new}, but both are given "
                f"({old}={_fmt(getattr(args, old), old)}, {new}={_fmt(current, new)})"
            )
        else:
            object.__setattr__(args, new, converted)

    def merge_into(old, new, key, converted):
        target = getattr(args, new)
        if target is None:
            target = {}
        if isinstance(target, str):
            target = _coerce_json_dict(target, allow_path=True) if target.strip().startswith("{") else target
        if not isinstance(target, dict):
            problems.append(f"{old}: cannot be merged into {new} given as a file path; put '{key}' in that file")
            return
        if key in target and target[key] != converted:
            problems.append(f"{old}: conflicts with {new}['{key}']={_fmt(target[key], key)}")
            return
        object.__setattr__(args, new, {**target, key: converted})

    organisation = args.push_to_hub_organization
    for old, new in aliases.items():
        value = getattr(args, old)
        if value is None:
            continue
        if old in (selections := get_catalog().alias_selections):
            kind, name = selections[old]
            _warn_alias(old, kind, f" ({kind}={name!r})")
            if value is not False:  # tpu_num_cores is a count: any value selects the backend
                if getattr(args, kind) not in ("auto", None, name):
                    problems.append(f"{old}: asks for {kind} {name!r} but {kind}={getattr(args, kind)!r}")
                else:  # given under its old name: explicit, not derived (survives re-derivation)
                    object.__setattr__(args, kind, name)
        elif old == "include_inputs_for_metrics":
            _warn_alias(old, new, " (include_for_metrics=['inputs'])")
            if value and "inputs" not in _split_words(args.include_for_metrics):
                object.__setattr__(args, new, _split_words(args.include_for_metrics) + ["inputs"])
        elif old == "tpu_metrics_debug":
            _warn_alias(old, new, " (debug='tpu_metrics_debug')")
            if value and "tpu_metrics_debug" not in _split_words(args.debug):
                object.__setattr__(args, new, _split_words(args.debug) + ["tpu_metrics_debug"])
        elif old == "adafactor":
            _warn_alias(old, new, " (optim='adafactor')")
            if value:
                move(old, new, "adafactor")
        elif old in ("fsdp_min_num_params", "fsdp_transformer_layer_cls_to_wrap"):
            key = old[len("fsdp_") :]
            _warn_alias(old, f"{new}['{key}']")
            converted = _split_words(value) if key == "transformer_layer_cls_to_wrap" else value
            merge_into(old, new, key, converted)
        elif old == "dispatch_batches":
            _warn_alias(old, f"{new}['dispatch_batches']")
            merge_into(old, new, "dispatch_batches", value)
        elif old == "push_to_hub_organization":
            continue  # handled with push_to_hub_model_id below
        elif old == "push_to_hub_model_id":
            _warn_alias(old, new)
            move(old, new, f"{organisation}/{value}" if organisation else value)
        else:
            _warn_alias(old, new)
            move(old, new, value)
        object.__setattr__(args, old, None)

    if organisation is not None:
        _warn_alias("push_to_hub_organization", "hub_model_id", " (hub_model_id='organisation/name')")
        if args.hub_model_id is None or "/" not in args.hub_model_id:
            name = args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir))
            object.__setattr__(args, "hub_model_id", f"{organisation}/{name}")
        object.__setattr__(args, "push_to_hub_organization", None)
    return problems


# --------------------------------------------------------------------------- 3. normalise


def _whole_or_fraction(name: str, value, problems: list[str]):
    """Step counts: a float in (0, 1) is a fraction of the run; anything else a whole count."""
    if value is None or not _is_number(value):
        return value
    if isinstance(value, float):
        if 0 < value < 1:
            return value
        if not value.is_integer():
            problems.append(f"{name}: must be a whole number of steps or a fraction in (0, 1), got {value}")
            return value
        return int(value)
    return value


def normalise(args) -> list[str]:
    """Give every field one canonical shape, so consumers never re-parse user input."""
    problems: list[str] = []
    for name in STEP_FIELDS:
        object.__setattr__(args, name, _whole_or_fraction(name, getattr(args, name), problems))

    for name in JSON_FIELDS:
        value = getattr(args, name)
        if value is None:
            continue
        if name == "parallelism_config" and parallelism.is_config_object(value):
            # accelerate's ParallelismConfig: the dict of its set fields, so plugins read one shape
            value = parallelism.as_dict(value)
        try:
            value = _coerce_json_dict(value, allow_path=True)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if name == "fsdp_config" and isinstance(value, dict):
            # v4 spelled the keys with an fsdp_ prefix; accept both spellings.
            value = {(k[5:] if k.startswith("fsdp_") else k): v for k, v in value.items()}
        object.__setattr__(args, name, value)

    fsdp = args.fsdp
    if fsdp is True:
        fsdp = ["full_shard"]
    object.__setattr__(args, "fsdp", _split_words(fsdp))
    sharded = args.sharded_ddp
    object.__setattr__(args, "sharded_ddp", ["simple"] if sharded is True else _split_words(sharded))
    for name in ("debug", "include_for_metrics", "report_to"):
        object.__setattr__(args, name, _split_words(getattr(args, name)))
    for name in ("label_names", "optim_target_modules"):
        value = getattr(args, name)
        if value is not None:
            object.__setattr__(args, name, _split_words(value))

    seen = args.include_num_input_tokens_seen
    if isinstance(seen, str) and seen.strip().lower() in _TRUE | _FALSE:
        seen = seen.strip().lower() in _TRUE
    if seen is True or seen is None:
        seen = "all" if seen else "no"
    elif seen is False:
        seen = "no"
    object.__setattr__(args, "include_num_input_tokens_seen", seen)

    if not isinstance(args.plugin_options, dict):
        problems.append(f"plugin_options: expected a mapping of option name to value, got {_fmt(args.plugin_options)}")
    if args.save_safetensors is False:
        warnings.warn(
            "save_safetensors=False is ignored: treadle always writes checkpoints as safetensors.",
            UserWarning,
            stacklevel=4,
        )
    return problems


# --------------------------------------------------------------------------- 4. derive


def derive(args) -> None:
    """Fill in what the user left open from what they chose, recording each reason.

    Selectors the user set explicitly are never overridden; when they contradict a
    flag, nothing is derived and ``check`` reports it.
    """
    catalog = get_catalog()
    # precision: --precision wins; else the familiar flags (the catalog's implications); else fp32.
    if args.precision is None:
        implied = catalog.implied("precision", args)
        if implied is not None:
            record(args, "precision", *implied)
    elif (flag := catalog.mirrored_flag("precision", args.precision, args)) is not None:
        record(args, flag, True, f"implied by precision={args.precision!r}")

    # backend: --use_cpu is the familiar spelling of --backend cpu.
    if args.use_cpu and args.backend == "auto":
        record(args, "backend", "cpu", "implied by use_cpu=True")
    elif args.backend == "cpu" and not args.use_cpu:
        record(args, "use_cpu", True, "implied by backend='cpu'")

    # strategy: an fsdp/deepspeed config names it; otherwise the launcher's world size (the catalog).
    if args.strategy is None and (implied := catalog.implied("strategy", args)) is not None:
        record(args, "strategy", *implied)

    if (args.torch_compile_backend or args.torch_compile_mode) and not args.torch_compile:
        which = "torch_compile_backend" if args.torch_compile_backend else "torch_compile_mode"
        record(args, "torch_compile", True, f"implied by {which}={getattr(args, which)!r}")

    if args.do_eval is None:
        if args.eval_strategy != "no":
            record(args, "do_eval", True, f"implied by eval_strategy={args.eval_strategy!r}")
        else:
            record(args, "do_eval", False, "default: eval_strategy='no'")

    if args.eval_strategy == "steps" and args.eval_steps is None and _is_number(args.logging_steps) and args.logging_steps > 0:
        record(args, "eval_steps", args.logging_steps, "defaults to logging_steps")

    if args.metric_for_best_model is None:
        if args.load_best_model_at_end:
            record(args, "metric_for_best_model", "loss", "default for load_best_model_at_end=True")
        elif args.lr_scheduler_type == "reduce_lr_on_plateau":
            record(args, "metric_for_best_model", "loss", "default for lr_scheduler_type='reduce_lr_on_plateau'")

    if args.greater_is_better is None and isinstance(args.metric_for_best_model, str):
        metric = args.metric_for_best_model
        record(args, "greater_is_better", not metric.endswith("loss"), f"follows metric_for_best_model={metric!r}")

    if args.disable_tqdm is None and args.log_level in LOG_LEVELS:
        quiet = LOG_LEVELS[args.log_level] > LOG_LEVELS["warning"]
        record(args, "disable_tqdm", quiet, f"follows log_level={args.log_level!r}")

    if args.report_to == ["none"]:
        record(args, "report_to", [], "'none' selects no reporter")


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


# --------------------------------------------------------------------------- 5. check

Rule = Callable[[Any], Iterator[str]]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    """Register a validation rule; each yields zero or more problem messages."""
    RULES.append(fn)
    return fn


def check(args, metadata: dict[str, dict], tolerate_errors: bool = False) -> list[str]:
    """Run every rule and return all problems found.

    ``tolerate_errors`` is set when coercion already reported a bad value: a rule
    that trips over that value is skipped rather than masking the real message.
    """
    problems: list[str] = []
    for fn in [_choices_rule(metadata)] + RULES:
        try:
            problems.extend(fn(args))
        except (TypeError, ValueError, AttributeError):
            if not tolerate_errors:
                raise
    return problems


def _choices_rule(metadata: dict[str, dict]) -> Rule:
    def choices(args):
        for name, meta in metadata.items():
            allowed = meta.get("choices")
            if not allowed:
                continue
            value = getattr(args, name)
            values = value if isinstance(value, list) else [value]
            for v in values:
                if v is not None and v not in allowed:
                    yield f"{name}: {v!r} is not one of {', '.join(map(str, allowed))}"

    return choices


_BOUNDS = {
    # name: (lowest, lowest allowed?, highest, highest allowed?)
    # counts of samples / batches: above 2**31 no sampler, loader or tensor index copes
    "per_device_train_batch_size": (1, True, 2**31, False),
    "per_device_eval_batch_size": (1, True, 2**31, False),
    "gradient_accumulation_steps": (1, True, 2**31, False),
    "eval_accumulation_steps": (1, True, 2**31, False),
    "torch_empty_cache_steps": (1, True, None, None),
    "dataloader_num_workers": (0, True, None, None),
    "dataloader_prefetch_factor": (1, True, None, None),
    "save_total_limit": (1, True, None, None),
    "ddp_timeout": (0, False, None, None),
    "ddp_bucket_cap_mb": (0, False, None, None),
    "learning_rate": (0, True, None, None),
    "weight_decay": (0, True, None, None),
    "adam_beta1": (0, True, 1, False),
    "adam_beta2": (0, True, 1, False),
    "adam_epsilon": (0, True, None, None),
    "max_grad_norm": (0, True, None, None),
    "num_train_epochs": (0, True, None, None),
    "warmup_ratio": (0, True, 1, True),
    "warmup_steps": (0, True, None, None),
    "label_smoothing_factor": (0, True, 1, False),
    "eval_delay": (0, True, None, None),
    "neftune_noise_alpha": (0, False, None, None),
    "logging_steps": (0, True, None, None),
    "save_steps": (0, True, None, None),
    "eval_steps": (0, False, None, None),
    "seed": (0, True, 2**32, False),
    "data_seed": (0, True, 2**32, False),
}


@rule
def bounds(args):
    for name, (low, low_ok, high, high_ok) in _BOUNDS.items():
        value = getattr(args, name)
        if not _is_number(value):
            continue
        too_low = low is not None and (value < low if low_ok else value <= low)
        too_high = high is not None and (value > high if high_ok else value >= high)
        if too_low or too_high:
            lo = "" if low is None else ("[" if low_ok else "(") + str(low)
            hi = "" if high is None else str(high) + ("]" if high_ok else ")")
            span = f"in {lo}, {hi}" if high is not None else f"{'>=' if low_ok else '>'} {low}"
            yield f"{name}: must be {span}, got {value}"


@rule
def paths(args):
    """Paths that can only be a mistake, caught before anything is trained or written."""
    if isinstance(args.output_dir, str) and not args.output_dir.strip():
        yield "output_dir: is empty; name a directory (the default is 'trainer_output')"
    logging_dir = args.logging_dir
    if isinstance(logging_dir, str) and not logging_dir.strip():
        yield "logging_dir: is empty; name a directory, or leave it unset for one under output_dir"
    elif isinstance(logging_dir, str) and os.path.exists(logging_dir) and not os.path.isdir(logging_dir):
        yield f"logging_dir: {logging_dir!r} is a file, not a directory"
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and not resume.strip():
        yield "resume_from_checkpoint: is empty; name a checkpoint directory, or 'true' for the newest one in output_dir"


@rule
def max_steps_or_epochs(args):
    if args.max_steps == 0 or args.max_steps < -1:
        yield f"max_steps: must be a positive number of steps, or -1 to train for num_train_epochs (got {args.max_steps})"
    if args.do_train and args.max_steps <= 0 and args.num_train_epochs == 0:
        yield "num_train_epochs: is 0 and max_steps is not set, so do_train would train for zero steps"


@rule
def interval_steps(args):
    if args.logging_strategy == "steps" and not args.logging_steps > 0:
        yield "logging_steps: logging_strategy='steps' needs logging_steps > 0"
    if args.save_strategy == "steps" and not args.save_steps > 0:
        yield "save_steps: save_strategy='steps' needs save_steps > 0"
    if args.eval_strategy == "steps" and args.eval_steps is None:
        yield "eval_steps: eval_strategy='steps' needs eval_steps > 0 (or logging_steps > 0 to copy from)"


@rule
def do_eval_consistent(args):
    if args.do_eval is False and args.eval_strategy != "no" and "do_eval" not in args.__dict__["_derived"]:
        yield f"do_eval: is False but eval_strategy={args.eval_strategy!r} evaluates during training"


@rule
def best_model(args):
    if args.save_strategy == "best":
        if not args.metric_for_best_model:
            yield "save_strategy: 'best' needs metric_for_best_model to know what best means"
        if args.eval_strategy == "no":
            yield "save_strategy: 'best' needs an eval_strategy other than 'no' to produce metrics"
    if args.lr_scheduler_type == "reduce_lr_on_plateau" and args.eval_strategy == "no":
        yield "lr_scheduler_type: 'reduce_lr_on_plateau' needs an eval_strategy other than 'no' to read the metric"
    if not args.load_best_model_at_end:
        return
    if args.eval_strategy == "no":
        yield "load_best_model_at_end: needs an eval_strategy other than 'no'"
        return
    if args.save_strategy == "best":
        return
    if args.save_strategy != args.eval_strategy:
        yield (
            f"load_best_model_at_end: save_strategy ({args.save_strategy!r}) must match "
            f"eval_strategy ({args.eval_strategy!r}), or be 'best'"
        )
        return
    if args.save_strategy == "steps" and _is_number(args.eval_steps) and _is_number(args.save_steps):
        save, ev = args.save_steps, args.eval_steps
        if (save < 1) != (ev < 1):
            yield "load_best_model_at_end: save_steps and eval_steps must both be fractions or both be step counts"
        elif ev > 0:
            ratio = save / ev
            whole = save % ev == 0 if isinstance(save, int) and isinstance(ev, int) else math.isclose(ratio, round(ratio))
            if not whole or round(ratio) == 0:
                yield f"load_best_model_at_end: save_steps ({save}) must be a round multiple of eval_steps ({ev})"


@rule
def optimizer(args):
    # Which names exist is the optimizer registry's business (plugins add names), checked
    # when the component is resolved; here only the shape of the value.
    name = args.optim
    if not isinstance(name, str) or not name:
        yield f"optim: must be an optimizer name, got {_fmt(name)}"


@rule
def reporters(args):
    names = args.report_to
    if ("all" in names or "none" in names) and len(names) > 1:
        yield f"report_to: 'all' and 'none' cannot be combined with other names (got {' '.join(names)})"


@rule
def selectors(args):
    """--precision/--backend/--strategy against the familiar flags that imply them."""
    if args.fp16 and args.bf16:
        yield "fp16, bf16: choose one half-precision mode, not both"
    if args.fp16_full_eval and args.bf16_full_eval:
        yield "fp16_full_eval, bf16_full_eval: choose one, not both"
    catalog = get_catalog()
    for problem in catalog.contradictions("precision", args):
        if not (args.fp16 and args.bf16):  # said above, in the words of the flags
            yield problem
    for name in ("backend", "task"):
        value = getattr(args, name)
        if not isinstance(value, str) or not value.strip() or re.search(r"\s", value):
            yield f"{name}: must be a single name, got {_fmt(value, name)}"
    for name in ("precision", "strategy"):
        value = getattr(args, name)
        if value is not None and (not isinstance(value, str) or not value.strip() or re.search(r"\s", value)):
            yield f"{name}: must be a single name, got {_fmt(value, name)}"
    if args.use_cpu and args.backend != "cpu":
        yield f"backend: {args.backend!r} contradicts use_cpu=True"
    if args.tf32 and (args.use_cpu or args.backend == "cpu"):
        yield "tf32: needs an Ampere or newer CUDA GPU, but the backend is cpu"
    yield from catalog.contradictions("strategy", args)


@rule
def fsdp_options(args):
    options = args.fsdp
    if "full_shard" in options and "shard_grad_op" in options:
        yield "fsdp: 'full_shard' and 'shard_grad_op' are alternative sharding modes; pick one"
    if "offload" in options and not ({"full_shard", "shard_grad_op"} & set(options)):
        yield "fsdp: 'offload' works only together with 'full_shard' or 'shard_grad_op'"
    config = args.fsdp_config
    if isinstance(config, dict):
        if config.get("xla_fsdp_grad_ckpt") and not config.get("xla"):
            yield "fsdp_config: xla_fsdp_grad_ckpt needs xla=true"
        if config.get("cpu_ram_efficient_loading") and config.get("sync_module_states") is False:
            yield ("fsdp_config: cpu_ram_efficient_loading needs sync_module_states=true (only the first process loads "
                   "the weights; the others receive them from it)")
    if args.sharded_ddp:
        yield "sharded_ddp: FairScale sharded DDP is not supported; use fsdp (e.g. 'shard_grad_op' or 'full_shard')"


@rule
def dataloader(args):
    if args.dataloader_num_workers == 0:
        if args.dataloader_prefetch_factor is not None:
            yield "dataloader_prefetch_factor: only applies with dataloader_num_workers > 0"
        if args.dataloader_persistent_workers:
            yield "dataloader_persistent_workers: only applies with dataloader_num_workers > 0"


@rule
def json_fields(args):
    for name in JSON_FIELDS:
        value = getattr(args, name)
        if value is not None and not isinstance(value, (dict, str)):
            yield f"{name}: expected a JSON object or the path of a JSON file, got {_fmt(value, name)}"


@rule
def plugin_option_keys(args):
    options = args.plugin_options
    if not isinstance(options, dict):
        return
    core = {f.name for f in dataclasses.fields(args)}
    for key in options:
        if not isinstance(key, str) or not key.isidentifier():
            yield f"plugin_options: keys must be flat option names like 'wandb_project', got {_fmt(key)}"
        elif key in core:
            yield f"plugin_options: {key!r} is a core field; set it directly"
