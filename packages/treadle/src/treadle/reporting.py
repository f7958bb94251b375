"""What every metrics reporter does the same way: metric names, numbers, the run's config.

The tensorboard, wandb and mlflow plugins show the same run, so they name the metrics alike
(``train/loss``, ``eval/accuracy``: the grouping all three UIs understand) and record the same
sanitized arguments. Kept in the core so no plugin has to import another one.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
from typing import Any, Optional

_SPLITS = ("eval", "test")
_URL_CREDENTIALS = re.compile(r"^(?P<scheme>[a-zA-Z][\w+.-]*://)[^/@\s]+@")


def metric_name(key: str) -> str:
    """``eval_loss`` -> ``eval/loss``, ``test_accuracy`` -> ``test/accuracy``, anything else -> ``train/<key>``.

    Dataset-named evaluations keep their name: ``eval_squad_f1`` -> ``eval/squad_f1``. The end
    of training's ``train_loss`` (the mean over the run) becomes ``train/train_loss``, apart
    from the logged ``train/loss`` curve.
    """
    for split in _SPLITS:
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1:]}"
    return f"train/{key}"


def as_number(value: Any) -> Optional[float]:
    """A loggable number (ints, floats, one-element tensors or arrays), or None for anything else.

    Booleans and strings are not metrics. NaN and infinities are numbers: a reporter decides
    whether its service takes them.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item):
        try:
            value = item()
        except (TypeError, ValueError, RuntimeError):  # more than one element
            return None
        return None if isinstance(value, bool) else float(value) if isinstance(value, (int, float)) else None
    return None


def scalar_metrics(logs: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of ``logs`` under their grouped names (``epoch`` included, as ``train/epoch``)."""
    out = {}
    for key, value in logs.items():
        number = as_number(value)
        if number is not None:
            out[metric_name(str(key))] = number
    return out


def run_config(args: Any, model: Any = None) -> dict[str, Any]:
    """The arguments as flat scalars for a service's config / params: credentials masked.

    ``to_sanitized_dict`` masks fields named like secrets (``hub_token``); the user part of a
    URL (``https://user:password@host``) is masked here too, since a tracking URI may carry one.
    With ``model``, its parameter count is added as ``model/num_parameters``.
    """
    config = {key: _mask_url(value) for key, value in args.to_sanitized_dict().items()}
    if model is not None and hasattr(model, "parameters"):
        config["model/num_parameters"] = sum(p.numel() for p in model.parameters())
    return config


def _mask_url(value: Any) -> Any:
    if isinstance(value, str) and "@" in value:
        return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", value)
    return value


def default_logging_dir(args: Any) -> str:
    """``--logging_dir``, else ``output_dir/runs/<Mon DD_HH-MM-SS>_<host>`` (the seeds' default)."""
    if args.logging_dir:
        return str(args.logging_dir)
    stamp = datetime.datetime.now().strftime("%b%d_%H-%M-%S")
    return os.path.join(str(args.output_dir), "runs", f"{stamp}_{socket.gethostname()}")


_RUN_RECORDS = re.compile(r"^(metrics\.jsonl|trainer_state\.json|.*_results\.json|predictions\.npy)$")


def model_files(output_dir: str) -> list[str]:
    """The saved model directly in ``output_dir`` (weights, config, tokenizer files): what an "end" upload sends.

    Empty when no model was saved there (``save_model`` writes ``model.safetensors``). The
    checkpoints below it and the run's own records (metrics, results, trainer state) are left out.
    """
    if not os.path.isfile(os.path.join(output_dir, "model.safetensors")):
        return []
    names = sorted(os.listdir(output_dir))
    return [os.path.join(output_dir, n) for n in names if os.path.isfile(os.path.join(output_dir, n)) and not _RUN_RECORDS.match(n)]


def unreachable(url: str, timeout: float = 3.0) -> Optional[str]:
    """Why the HTTP server at ``url`` cannot be reached within ``timeout`` seconds; None when it answers.

    An HTTP answer counts (a 404 still proves the server is there), except 502 / 503 / 504: a
    proxy or gateway saying the server behind it is not. Reporters probe their tracking server
    with it before the run, because the vendor clients retry for minutes.
    """
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}" if exc.code in (502, 503, 504) else None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason) or type(exc).__name__
