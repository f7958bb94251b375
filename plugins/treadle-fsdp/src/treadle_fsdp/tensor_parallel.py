"""Tensor parallel over one mesh dimension, with torch's ``parallelize_module``.

The plan names submodules by pattern (``*`` stands for one name part, as in
``layers.*.attn.q``) and gives each a style. It comes from ``parallelism_config["tp_plan"]``,
else from the model's ``_tp_plan`` (transformers models carry one, keyed relative to the model
or, through ``base_model_prefix``, to its base model). The style names are transformers':

* ``colwise``: the output features are split (``ColwiseParallel``); the next layer gets its
  slice of the activations, e.g. its share of the attention heads;
* ``rowwise``: the input features are split and the outputs summed (``RowwiseParallel``),
  closing a colwise pair with one all-reduce;
* ``colwise_rep`` (transformers 5: ``colwise_gather_output``): split like colwise, the output
  gathered back (an untied LM head);
* ``embedding_rowwise``: an ``nn.Embedding`` split by vocabulary rows, the looked-up vectors
  summed over the tp ranks (each holds the rows of its token ids, zeros elsewhere).

Each planned layer's split dimension must divide by the tensor-parallel size; a model whose
code reshapes by a fixed head count (rather than ``-1``) cannot run on its slice, which no
check here can see: such a model needs its own plan or stays at ``tp_size=1``.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn
from treadle.errors import UsageError

STYLES = ("colwise", "rowwise", "colwise_rep", "colwise_gather_output", "embedding_rowwise")


def _style(name: str) -> Any:
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    if name == "colwise":
        return ColwiseParallel()
    if name == "rowwise":
        return RowwiseParallel()
    if name == "embedding_rowwise":
        return RowwiseParallel(input_layouts=Replicate())
    return ColwiseParallel(output_layouts=Replicate())


def model_plan(model: nn.Module) -> dict[str, str] | None:
    """The plan the model declares (``_tp_plan``, or its config's ``base_model_tp_plan``), if any."""
    plan = getattr(model, "_tp_plan", None)
    if not plan:
        config = getattr(model, "config", None)
        base = getattr(config, "base_model_tp_plan", None)
        prefix = getattr(model, "base_model_prefix", "")
        if base:
            has_base = prefix and hasattr(model, prefix)
            plan = {f"{prefix}.{k}" if has_base else k: v for k, v in base.items()}
    return dict(plan) if plan else None


def _pattern(key: str) -> re.Pattern:
    return re.compile("^" + r"\.".join("[^.]+" if part == "*" else re.escape(part) for part in key.split(".")) + "$")


def resolve_plan(model: nn.Module, plan: dict[str, str], tp_size: int) -> dict[str, Any]:
    """Concrete module name -> ParallelStyle; raises UsageError naming what cannot be split."""
    unknown = sorted({style for style in plan.values() if style not in STYLES})
    if unknown:
        raise UsageError(
            f"tensor parallel plan: style(s) {', '.join(map(repr, unknown))} are not supported; use {', '.join(STYLES)}"
        )
    modules = dict(model.named_modules())
    resolved: dict[str, Any] = {}
    problems = []
    for key, style in plan.items():
        matcher = _pattern(key)
        for name, module in modules.items():
            if not matcher.match(name):
                continue
            wanted = nn.Embedding if style == "embedding_rowwise" else nn.Linear
            if not isinstance(module, wanted):
                problems.append(f"{name} ({type(module).__name__}) is not an nn.{wanted.__name__} (style {style})")
                continue
            if style == "embedding_rowwise":
                which, width = "num_embeddings", module.num_embeddings
            elif style.startswith("colwise"):
                which, width = "out_features", module.out_features
            else:
                which, width = "in_features", module.in_features
            if width % tp_size:
                problems.append(f"{name}: {which}={width} does not divide by tp_size={tp_size}")
                continue
            resolved[name] = _style(style)
    problems += _tied(model, resolved)
    if problems:
        raise UsageError("tensor parallel plan: " + "; ".join(problems))
    if not resolved:
        raise UsageError(
            f"tensor parallel plan: none of its patterns ({', '.join(plan)}) names a module of {type(model).__name__}"
        )
    return resolved


def _tied(model: nn.Module, resolved: dict[str, Any]) -> list[str]:
    """A weight shared by a planned layer and another module would be split one way and used another."""
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name.rpartition(".")[0])
    problems = []
    for users in owners.values():
        planned = [u for u in users if u in resolved]
        if planned and len(set(users)) > 1:
            problems.append(
                f"{planned[0]} shares its weight with {', '.join(u for u in users if u != planned[0])} (tied weights); "
                "untie them or leave both out of the plan"
            )
    return problems


def plan_for(model: nn.Module, user_plan: dict[str, str] | None, tp_size: int) -> dict[str, Any]:
    """The resolved plan for ``model`` (the user's, else the model's own); UsageError when there is none."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise UsageError(
            "parallelism_config tp_size: the model's parameters are already distributed (loaded with a tp_plan?); "
            "build it on one process's view and let the strategy split it"
        )
    plan = user_plan or model_plan(model)
    if not plan:
        raise UsageError(
            f"parallelism_config tp_size={tp_size}: {type(model).__name__} has no tensor-parallel plan (no _tp_plan); "
            "give one as parallelism_config tp_plan, e.g. {\"layers.*.q\": \"colwise\", \"layers.*.o\": \"rowwise\"}"
        )
    return resolve_plan(model, plan, tp_size)


def apply(model: nn.Module, tp_mesh: Any, user_plan: dict[str, str] | None) -> dict[str, Any]:
    """Split the planned layers over ``tp_mesh``; returns the resolved plan."""
    from torch.distributed.tensor.parallel import parallelize_module

    resolved = plan_for(model, user_plan, tp_mesh.size())
    parallelize_module(model, tp_mesh, resolved)
    return resolved
