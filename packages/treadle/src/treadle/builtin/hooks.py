"""treadle's builtin plugin: the hooks module the plugin manager registers first.

It only names components and where they live; nothing here imports torch. A third-party
plugin's ``hooks.py`` looks exactly like this one.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from treadle.markers import hookimpl

_PKG = "treadle.builtin"

# Optimizers torch itself provides: name -> (description).
TORCH_OPTIMIZERS = {
    "adamw_torch": "torch.optim.AdamW",
    "adamw_torch_fused": "torch.optim.AdamW with fused=True",
    "adafactor": "torch.optim.Adafactor",
    "sgd": "torch.optim.SGD",
    "adagrad": "torch.optim.Adagrad",
    "rmsprop": "torch.optim.RMSprop",
    "adam_torch": "torch.optim.Adam",
    "adamax_torch": "torch.optim.Adamax",
    "nadam_torch": "torch.optim.NAdam",
    "radam_torch": "torch.optim.RAdam",
}

# Optimizer names of the seeds that need another library: name -> (required modules, description).
LIBRARY_OPTIMIZERS = {
    "adamw_torch_xla": (("torch_xla",), "torch.optim.AdamW, for XLA devices"),
    "adamw_torch_npu_fused": (("torch_npu",), "torch_npu's fused AdamW"),
    "adamw_apex_fused": (("apex",), "apex FusedAdam"),
    "adamw_anyprecision": (("torchdistx",), "torchdistx AnyPrecisionAdamW"),
    "adamw_torch_4bit": (("torchao",), "torchao 4-bit AdamW"),
    "adamw_torch_8bit": (("torchao",), "torchao 8-bit AdamW"),
    "adamw_bnb_8bit": (("bitsandbytes",), "bitsandbytes 8-bit AdamW"),
    "adamw_8bit": (("bitsandbytes",), "bitsandbytes 8-bit AdamW"),
    "ademamix": (("bitsandbytes",), "bitsandbytes AdEMAMix"),
    "ademamix_8bit": (("bitsandbytes",), "bitsandbytes 8-bit AdEMAMix"),
    "lion_8bit": (("bitsandbytes",), "bitsandbytes 8-bit Lion"),
    "lion_32bit": (("bitsandbytes",), "bitsandbytes Lion"),
    "paged_adamw_32bit": (("bitsandbytes",), "bitsandbytes paged AdamW"),
    "paged_adamw_8bit": (("bitsandbytes",), "bitsandbytes paged 8-bit AdamW"),
    "paged_ademamix_32bit": (("bitsandbytes",), "bitsandbytes paged AdEMAMix"),
    "paged_ademamix_8bit": (("bitsandbytes",), "bitsandbytes paged 8-bit AdEMAMix"),
    "paged_lion_32bit": (("bitsandbytes",), "bitsandbytes paged Lion"),
    "paged_lion_8bit": (("bitsandbytes",), "bitsandbytes paged 8-bit Lion"),
    "rmsprop_bnb": (("bitsandbytes",), "bitsandbytes RMSprop"),
    "rmsprop_bnb_8bit": (("bitsandbytes",), "bitsandbytes 8-bit RMSprop"),
    "rmsprop_bnb_32bit": (("bitsandbytes",), "bitsandbytes 32-bit RMSprop"),
    "galore_adamw": (("galore_torch",), "GaLore AdamW"),
    "galore_adamw_8bit": (("galore_torch",), "GaLore 8-bit AdamW"),
    "galore_adafactor": (("galore_torch",), "GaLore Adafactor"),
    "galore_adamw_layerwise": (("galore_torch",), "GaLore AdamW, layer-wise"),
    "galore_adamw_8bit_layerwise": (("galore_torch",), "GaLore 8-bit AdamW, layer-wise"),
    "galore_adafactor_layerwise": (("galore_torch",), "GaLore Adafactor, layer-wise"),
    "apollo_adamw": (("apollo_torch",), "APOLLO AdamW"),
    "apollo_adamw_layerwise": (("apollo_torch",), "APOLLO AdamW, layer-wise"),
    "lomo": (("lomo_optim",), "LOMO"),
    "adalomo": (("lomo_optim",), "AdaLomo"),
    "grokadamw": (("grokadamw",), "GrokAdamW"),
    "schedule_free_adamw": (("schedulefree",), "schedule-free AdamW"),
    "schedule_free_radam": (("schedulefree",), "schedule-free RAdam"),
    "schedule_free_sgd": (("schedulefree",), "schedule-free SGD"),
    "stable_adamw": (("optimi",), "torch-optimi StableAdamW"),
}

SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)


@hookimpl
def treadle_register_backends(register: Any) -> None:
    register("cpu", f"{_PKG}.cpu:CpuBackend", description="the host CPU", priority=0)


@hookimpl
def treadle_register_precisions(register: Any) -> None:
    register("fp32", f"{_PKG}.fp32:Fp32Precision", description="full float32 precision", aliases=("32", "32-true"))


@hookimpl
def treadle_register_strategies(register: Any) -> None:
    register("single", f"{_PKG}.single:SingleDeviceStrategy", description="one process, one device")


@hookimpl
def treadle_register_optimizers(register: Any) -> None:
    for name, description in TORCH_OPTIMIZERS.items():
        register(name, f"{_PKG}.optimizers:{name}", description=description)
    for name, (requires, description) in LIBRARY_OPTIMIZERS.items():
        register(name, f"{_PKG}.optimizers:{name}", description=description, requires=requires)


@hookimpl
def treadle_register_schedulers(register: Any) -> None:
    for name in SCHEDULERS:
        register(name, f"{_PKG}.schedulers:{name}")


@hookimpl
def treadle_register_reporters(register: Any) -> None:
    register(
        "console", f"{_PKG}.reporters:ConsoleReporter", description="progress bar and log lines on the terminal", always=True
    )
    register("jsonl", f"{_PKG}.reporters:JsonlReporter", description="metrics as JSON lines in output_dir")


@hookimpl
def treadle_register_tasks(register: Any) -> None:
    register(
        "demo",
        f"{_PKG}.demo_task:build",
        description="classify noisy synthetic 8x8 digit glyphs with a small MLP; no download",
        defaults={
            "learning_rate": 2e-3,
            "per_device_train_batch_size": 64,
            "per_device_eval_batch_size": 256,
            "num_train_epochs": 3.0,
            "eval_strategy": "epoch",
            "logging_steps": 50,
            "output_dir": "treadle_demo_output",
            "report_to": ["jsonl"],
        },
    )


@hookimpl(trylast=True)
def treadle_resolve_component(kind: str, name: str) -> Any:
    """Accept ``module:attr`` or ``path/to/file.py:attr`` for any kind, so user code needs no plugin."""
    if ":" not in name or kind not in {"task", "optimizer", "scheduler", "reporter", "backend", "precision", "strategy"}:
        return None
    from treadle.plugins import BUILTIN_PLUGIN_NAME, ComponentSpec, PluginRecord

    module = name.rpartition(":")[0]
    record = PluginRecord(BUILTIN_PLUGIN_NAME, f"user code ({module})", "-", module)
    return ComponentSpec(
        kind=kind, name=name, target=name, plugin=record, description="given as module:attr", user_code=True
    )


@hookimpl(trylast=True)
def treadle_select_default(kind: str, candidates: list) -> Any:
    """``--backend auto``: the highest-priority backend whose class says it is available."""
    for spec in candidates:
        if spec.available() and spec.load().is_available():
            return spec.name
    return None


@hookimpl
def treadle_report_env() -> list[tuple[str, str]]:
    lines = [
        ("platform", platform.platform()),
        ("python", sys.version.split()[0]),
        ("cpu count", str(os.cpu_count())),
    ]
    try:
        import torch

        lines.append(("torch", torch.__version__))
        lines.append(("torch cuda", f"{torch.version.cuda} (available: {torch.cuda.is_available()})"))
        lines.append(("torch threads", str(torch.get_num_threads())))
        from treadle.builtin.cpu import default_threads

        threads, why = default_threads()
        lines.append(("cpu backend threads", f"{threads} per process ({why})"))
    except ImportError as exc:
        lines.append(("torch", f"not importable: {exc}"))
    lines.append(("optimizer libraries", _optimizer_libraries()))
    return lines


def _optimizer_libraries() -> str:
    """Which of the libraries behind the ``--optim`` names are installed (found, not imported)."""
    import importlib.util

    modules = sorted({module for requires, _ in LIBRARY_OPTIMIZERS.values() for module in requires})
    found = []
    for module in modules:
        try:
            found.append(importlib.util.find_spec(module) is not None)
        except (ImportError, ValueError):
            found.append(False)
    installed = [m for m, ok in zip(modules, found) if ok]
    missing = [m for m, ok in zip(modules, found) if not ok]
    return f"installed: {', '.join(installed) or 'none'}; not installed: {', '.join(missing) or 'none'}"
