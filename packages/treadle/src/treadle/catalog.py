"""The one table of seed compatibility: which familiar flag selects which component, and where
a missing component comes from.

transformers users write ``--fp16``, ``--fsdp full_shard`` or ``--deepspeed ds.json`` and launch
with ``torchrun``; in treadle those choose a precision, a strategy, a backend by name. This module
is the only core module that knows those names (besides ``treadle.builtin``): the argument rules
(``treadle.args.rules``) read the implications from here, and the plugin manager reads the
install hints. Plugins add rows through the ``treadle_extend_catalog`` hook (a third-party
``--my_flag`` that selects its strategy), so the core never grows an ``if name == ...``.

It is data plus two small functions, imported at argument-parsing time: no torch here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = ["Catalog", "Implication", "get_catalog", "reset_catalog"]


@dataclass(frozen=True)
class Implication:
    """``reason(args)`` non-empty means: selector ``kind`` defaults to component ``name``.

    ``strength`` orders implications of one kind: a flag the user wrote (``--fsdp``, 0) beats a
    fact of the environment (``WORLD_SIZE=2``, 1); two of the same strength that disagree imply
    nothing, and ``contradictions`` reports them. ``mirror`` is the boolean seed flag that
    stands for the same choice (``fp16`` for precision ``fp16``): selecting the component by name
    sets it too, so code written for transformers that reads ``args.fp16`` still sees it.
    """

    kind: str
    name: str
    reason: Callable[[Any], Optional[str]]
    strength: int = 0
    mirror: Optional[str] = None
    field: str = ""
    """The seed field the implication reads (``fsdp``), for messages."""
    describe: Optional[Callable[[Any], str]] = None
    """How the flag's value is named in a contradiction message (``fsdp='full_shard'``)."""

    def described(self, args: Any) -> str:
        return self.describe(args) if self.describe else f"{self.field}={getattr(args, self.field, None)!r}"


def _flag(field: str) -> Callable[[Any], Optional[str]]:
    return lambda args: f"implied by {field}=True" if getattr(args, field, False) else None


def _world_size(args: Any) -> Optional[str]:
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    return f"WORLD_SIZE={world} in the environment" if world > 1 else None


def _fsdp(args: Any) -> Optional[str]:
    return f"implied by fsdp={' '.join(args.fsdp)!r}" if args.fsdp else None


def _deepspeed(args: Any) -> Optional[str]:
    return "implied by deepspeed config" if args.deepspeed is not None else None


class Catalog:
    """Implications, defaults, install hints and old spellings of selections (see module doc)."""

    def __init__(self) -> None:
        self.implications: list[Implication] = []
        self.defaults: dict[str, tuple[str, str]] = {}
        """kind -> (builtin name, reason) when nothing implies a component of that kind."""
        self.install_hints: dict[tuple[str, str], str] = {}
        """(kind, name) -> the distribution that provides it."""
        self.alias_selections: dict[str, tuple[str, str]] = {}
        """old flag -> (kind, name) it selects when true (``use_mps_device`` -> backend mps)."""
        self.library_hints: dict[tuple[str, str], str] = {}
        """(kind, name) -> how to get the library a component needs when no treadle plugin ships it yet."""
        self.eval_precisions: dict[str, str] = {}
        """full-evaluation flag -> the precision evaluation runs in (``fp16_full_eval`` -> fp16-true)."""

    def imply(self, kind: str, name: str, reason: Callable[[Any], Optional[str]], *, strength: int = 0,
              mirror: Optional[str] = None, field: str = "", describe: Optional[Callable[[Any], str]] = None) -> None:
        self.implications.append(Implication(kind, name, reason, strength, mirror, field or mirror or "", describe))

    def hint(self, kind: str, name: str, distribution: str) -> None:
        self.install_hints[(kind, name)] = distribution

    def distributions_of_kind(self, kind: str) -> list[str]:
        """Every distribution the catalog knows to provide a component of ``kind`` (install hints)."""
        return sorted({dist for (k, _), dist in self.install_hints.items() if k == kind})

    def distribution_for(self, kind: str, name: str) -> Optional[str]:
        return self.install_hints.get((kind, name))

    # ------------------------------------------------------------------ used by the argument rules
    def implied(self, kind: str, args: Any) -> Optional[tuple[str, str]]:
        """``(name, reason)`` the flags imply for selector ``kind``, its default, or None (a conflict)."""
        found = [(imp, why) for imp in self.implications if imp.kind == kind and (why := imp.reason(args))]
        if found:
            strongest = min(imp.strength for imp, _ in found)
            found = [(imp, why) for imp, why in found if imp.strength == strongest]
            names = {imp.name for imp, _ in found}
            return (found[0][0].name, found[0][1]) if len(names) == 1 else None
        return self.defaults.get(kind)

    def mirrored_flag(self, kind: str, name: str, args: Any) -> Optional[str]:
        """The seed flag to set for an explicitly selected ``name`` (none if a sibling flag is set)."""
        mirrors = [imp for imp in self.implications if imp.kind == kind and imp.mirror]
        if any(getattr(args, imp.mirror, False) for imp in mirrors):
            return None
        return next((imp.mirror for imp in mirrors if imp.name == name), None)

    def contradictions(self, kind: str, args: Any) -> list[str]:
        """Messages for flags that select a component other than the one selected by name, or
        that select two different components of ``kind`` at once."""
        chosen = getattr(args, kind, None)
        flagged = [imp for imp in self.implications if imp.kind == kind and imp.strength == 0 and imp.reason(args)]
        problems = []
        names = sorted({imp.name for imp in flagged})
        if len(names) > 1:
            problems.append(f"{', '.join(imp.field for imp in flagged)}: choose one, not several (each selects "
                            f"another {kind}: {', '.join(names)})")
        for imp in flagged:
            if chosen is not None and chosen not in ("auto", imp.name):
                problems.append(f"{kind}: {chosen!r} contradicts {imp.described(args)}")
        return problems


def _seed_catalog() -> Catalog:
    """The rows every treadle installation has: the seeds' flags and the first-party plugins."""
    catalog = Catalog()
    catalog.imply("precision", "fp16", _flag("fp16"), mirror="fp16")
    catalog.imply("precision", "bf16", _flag("bf16"), mirror="bf16")
    catalog.defaults["precision"] = ("fp32", "default: neither fp16 nor bf16 requested")
    catalog.imply("strategy", "fsdp", _fsdp, field="fsdp", describe=lambda args: f"fsdp={' '.join(args.fsdp)!r}")
    catalog.imply("strategy", "deepspeed", _deepspeed, field="deepspeed", describe=lambda args: "the deepspeed config")
    catalog.imply("strategy", "ddp", _world_size, strength=1)
    catalog.defaults["strategy"] = ("single", "default: one process, no fsdp/deepspeed config")
    catalog.eval_precisions.update(fp16_full_eval="fp16-true", bf16_full_eval="bf16-true")
    catalog.imply("kernel", "liger", _flag("use_liger_kernel"), field="use_liger_kernel")
    catalog.library_hints[("kernel", "liger")] = "pip install liger-kernel, which needs a CUDA GPU and Triton"
    catalog.alias_selections["use_mps_device"] = ("backend", "mps")
    catalog.alias_selections["tpu_num_cores"] = ("backend", "xla")
    for kind, name, distribution in (
        ("backend", "cuda", "treadle-cuda"), ("backend", "mps", "treadle-mps"), ("backend", "xla", "treadle-xla"),
        ("backend", "tpu", "treadle-xla"),
        ("precision", "fp16", "treadle-amp"), ("precision", "bf16", "treadle-amp"),
        ("precision", "fp16-true", "treadle-amp"), ("precision", "bf16-true", "treadle-amp"),
        ("strategy", "ddp", "treadle-ddp"), ("strategy", "fsdp", "treadle-fsdp"), ("strategy", "deepspeed", "treadle-deepspeed"),
        ("reporter", "tensorboard", "treadle-tensorboard"), ("reporter", "wandb", "treadle-wandb"),
        ("reporter", "mlflow", "treadle-mlflow"), ("hub", "huggingface", "treadle-hub"),
        ("search", "optuna", "treadle-optuna"),
    ):
        catalog.hint(kind, name, distribution)
    return catalog


_catalog: Optional[Catalog] = None


def get_catalog() -> Catalog:
    """The process's catalog: the seed rows plus what loaded plugins added (``treadle_extend_catalog``)."""
    global _catalog
    if _catalog is None:
        catalog = _seed_catalog()
        from treadle.plugins import get_plugin_manager

        _catalog = catalog  # set first: a plugin's hook may read it
        get_plugin_manager().pm.hook.treadle_extend_catalog(catalog=catalog)
    return _catalog


def reset_catalog() -> None:
    """Forget the catalog (the plugin manager calls this when it is rebuilt)."""
    global _catalog
    _catalog = None
