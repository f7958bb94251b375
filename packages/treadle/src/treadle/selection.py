"""Choosing a run's components from the arguments, through the plugin registries.

The backend, precision and strategy named by ``--backend`` / ``--precision`` / ``--strategy``
are resolved like any plugin's (the builtins included), checked against each other's declared
``compat`` data, and instantiated with their registered ``init`` presets. Reporters named by
``--report_to`` join the reporters registered with ``always=True`` (the builtin console).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Optional

from treadle.catalog import get_catalog
from treadle.components import Backend, Precision, Strategy
from treadle.errors import PluginError, UsageError
from treadle.flow import option_value
from treadle.plugins import ComponentSpec, TreadlePluginManager, get_plugin_manager

@dataclass
class RunComponents:
    backend: Backend
    precision: Precision
    strategy: Strategy
    specs: dict[str, ComponentSpec]
    eval_precision: Optional[Precision] = None
    """The precision evaluation runs in when it differs from training's (``--*_full_eval``)."""


def eval_precision_name(args: Any) -> Optional[tuple[str, str]]:
    """``(flag, precision name)`` of the full-evaluation flag that is set, or None (the flags and
    the precision each evaluates in are rows of ``treadle.catalog``)."""
    for flag, name in get_catalog().eval_precisions.items():
        if getattr(args, flag, False):
            return flag, name
    return None


def resolve_eval_precision(args: Any, pm: TreadlePluginManager) -> Optional[ComponentSpec]:
    """The spec of the eval precision; a missing one is an error that names the flag."""
    chosen = eval_precision_name(args)
    if chosen is None:
        return None
    flag, name = chosen
    try:
        return pm.resolve("precision", name, args)
    except PluginError as exc:
        raise PluginError(f"--{flag} evaluates in precision '{name}':\n{exc}") from None


def resolve_component_specs(args: Any, pm: TreadlePluginManager) -> dict[str, ComponentSpec]:
    backend = option_value(args.backend) or "auto"
    if backend == "auto":
        backend = pm.select_default("backend", args)
    return {
        "backend": pm.resolve("backend", backend, args),
        "precision": pm.resolve("precision", option_value(args.precision), args),
        "strategy": pm.resolve("strategy", option_value(args.strategy), args),
    }


def selected_backend(args: Any) -> Backend:
    """The backend ``args`` selects, instantiated (``--backend auto`` resolved as for a run).

    ``TrainingArguments.device`` and ``n_gpu`` read it, so they name the device a Trainer built
    from the same arguments trains on, whatever backend plugin provides it.
    """
    pm = get_plugin_manager()
    name = option_value(args.backend) or "auto"
    spec = pm.resolve("backend", pm.select_default("backend", args) if name == "auto" else name, args)
    return spec.load()(args, **spec.init)


def backend_availability(pm: TreadlePluginManager | None = None) -> list[tuple[str, str, str]]:
    """``(name, distribution, "available" | "not available: why")`` per installed backend, in ``auto`` order.

    For ``treadle env``: loads each backend class (so it imports torch and the backend's module)
    and asks it; a backend that fails to load says so instead of stopping the others.
    """
    pm = pm or get_plugin_manager()
    rows = []
    for spec in pm.registry("backend").values():
        missing = spec.missing_requirements()
        if missing:
            status = f"not available: {', '.join(missing)} not installed"
        else:
            try:
                reason = spec.load().unavailable_reason()
                status = "available" if reason is None else f"not available: {reason}"
            except Exception as exc:  # a plugin whose module cannot load is one line, not a crash
                status = f"broken: {exc}"
        rows.append((spec.name, spec.distribution, status))
    return rows


def _names(spec: ComponentSpec) -> set[str]:
    return {spec.name, *spec.aliases}


def compatibility_problems(specs: dict[str, ComponentSpec]) -> list[str]:
    """Every declared incompatibility between the selected components, one line each."""
    problems = []
    for spec in specs.values():
        for kind, allowed in spec.compat.items():
            other = specs.get(kind)
            if other is None or not allowed or _names(other) & set(allowed):
                continue
            problems.append(
                f"{spec.kind} '{spec.name}' (from {spec.distribution}) works only with {kind} "
                f"{', '.join(allowed)}; the selected {kind} is '{other.name}' (from {other.distribution})"
            )
    return problems


_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare_components(args: Any, pm: TreadlePluginManager | None = None) -> RunComponents:
    """Build the run's components before its model exists, for the next Trainer of ``args``.

    ``treadle train`` builds the task's model inside ``strategy.model_init_context()`` (meta
    device init for sharding), so it needs the strategy before the Trainer; the Trainer built
    next with the same arguments object takes these components instead of making new ones.
    """
    components = build_components(args, pm)
    try:
        _prepared[args] = components
    except TypeError:  # an arguments object that cannot be weakly referenced: nothing to hand over
        pass
    return components


def build_components(args: Any, pm: TreadlePluginManager | None = None) -> RunComponents:
    """Resolve, check and instantiate the backend, the precision and the strategy of a run
    (or take the ones ``prepare_components`` made for these arguments)."""
    try:
        prepared = _prepared.pop(args, None)
    except TypeError:
        prepared = None
    if prepared is not None:
        return prepared
    pm = pm or get_plugin_manager()
    specs = resolve_component_specs(args, pm)
    problems = compatibility_problems(specs)
    if problems:
        raise UsageError("the selected components do not work together:\n  " + "\n  ".join(problems))
    backend = specs["backend"].load()(args, **specs["backend"].init)
    precision = specs["precision"].load()(args, **specs["precision"].init)
    strategy = specs["strategy"].load()(args, backend, precision, **specs["strategy"].init)
    eval_spec = resolve_eval_precision(args, pm)
    eval_precision = eval_spec.load()(args, **eval_spec.init) if eval_spec is not None else None
    return RunComponents(backend, precision, strategy, specs, eval_precision)


def reporter_names(args: Any, pm: TreadlePluginManager) -> list[str]:
    """The ``always`` reporters (console), then those named by ``--report_to`` (``all`` / ``none`` understood)."""
    requested = args.report_to
    if requested is None:
        requested = []
    elif isinstance(requested, str):
        requested = [requested]
    requested = [option_value(r) for r in requested]
    if "none" in requested:
        requested = []
    elif "all" in requested:
        requested = pm.names("reporter")
    names = [spec.name for spec in pm.registry("reporter").values() if spec.always]
    for name in requested:
        if name not in names:
            names.append(name)
    return names


def build_reporters(args: Any, pm: TreadlePluginManager | None = None) -> list[tuple[str, Any]]:
    """``(name, reporter)`` for each reporter of the run, instantiated with its presets."""
    pm = pm or get_plugin_manager()
    reporters = []
    for name in reporter_names(args, pm):
        spec = pm.resolve("reporter", name, args)
        reporters.append((spec.name, spec.load()(args, **spec.init)))
    return reporters


def kernel_selections(args: Any) -> list[tuple[str, str]]:
    """``(kernel name, the flag that asks for it)`` for the kernels the arguments turn on (``--use_liger_kernel``)."""
    from treadle.catalog import get_catalog

    implied = get_catalog().implied("kernel", args)
    if implied is None:
        return []
    name, reason = implied
    return [(name, reason.removeprefix("implied by ").split("=")[0])]


def kernel_problem(args: Any, pm: TreadlePluginManager, name: str, flag: str) -> Optional[str]:
    """Why kernel ``name`` cannot be used (no plugin provides it, or its library is missing), or None."""
    from treadle.catalog import get_catalog

    try:
        spec = pm.resolve("kernel", name, args)
    except PluginError:
        installed = ", ".join(pm.names("kernel")) or "none"
        library = get_catalog().library_hints.get(("kernel", name))
        return (
            f"--{flag}: no installed plugin provides kernel '{name}' (installed kernels: {installed}). It comes from a "
            f"treadle plugin that registers kernel '{name}' (hook treadle_register_kernels) and brings the kernel "
            f"library{f' ({library})' if library else ''}; none ships with treadle yet. Install one, or drop --{flag}"
        )
    missing = spec.requirements_problem()
    return f"--{flag}: {missing}" if missing else None


def apply_kernels(args: Any, model: Any, pm: TreadlePluginManager | None = None) -> None:
    """Swap the selected kernels into ``model`` (in place), with ``--liger_kernel_config`` as options."""
    selections = kernel_selections(args)
    if not selections:
        return
    pm = pm or get_plugin_manager()
    for name, flag in selections:
        problem = kernel_problem(args, pm, name, flag)
        if problem:
            raise PluginError(problem)
        config = args.load_json_field("liger_kernel_config") if hasattr(args, "load_json_field") else None
        pm.resolve("kernel", name, args).load()(model, **(config or {}))


def build_hub(args: Any, pm: TreadlePluginManager | None = None) -> Any:
    """The hub synchroniser for ``--push_to_hub`` (the one installed hub plugin), or None."""
    if not args.push_to_hub:
        return None
    pm = pm or get_plugin_manager()
    names = pm.names("hub")
    if not names:
        from treadle.catalog import get_catalog
        from treadle.install_hints import install_command

        hub_plugins = sorted({d for (kind, _), d in get_catalog().install_hints.items() if kind == "hub"})
        hint = " or ".join(install_command(d) for d in hub_plugins) or "install a plugin that provides a hub"
        raise UsageError(f"--push_to_hub: no installed plugin provides a model hub. To add one: {hint}")
    spec = pm.resolve("hub", names[0], args)
    return spec.load()(args, **spec.init)
