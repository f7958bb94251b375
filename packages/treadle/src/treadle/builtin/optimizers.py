"""The optimizers selected by ``--optim``, under the seed documents' names.

Each public function is an optimizer factory as ``treadle_register_optimizers`` defines it::

    name(args, model=None) -> (optimizer_class, kwargs)

and the loop builds the optimizer as ``optimizer_class(params, **kwargs)``. One key of
``kwargs`` is reserved, and the loop pops it before the call: ``"params"`` is what to pass as
the first argument instead of the loop's own parameter groups (GaLore / APOLLO build their own
groups; LOMO takes the model itself).

What the factories read from the arguments:

* ``learning_rate`` -> ``lr``; ``adam_beta1`` / ``adam_beta2`` -> ``betas`` and ``adam_epsilon`` ->
  ``eps`` for the Adam family.
* ``weight_decay``: the loop applies it per parameter group (no decay for biases and norms).
  torch's optimizers also get it as their default so an optimizer built on bare parameters
  decays as asked instead of by torch's own default (0.01 for ``AdamW``).
* ``optim_args``: ``"key=value,key=value"``. For torch's optimizers every key is a keyword of
  the optimizer class (``--optim sgd --optim_args momentum=0.9,nesterov=true``), values read as
  Python literals (numbers, booleans, tuples such as ``betas=(0.9,0.95)``). For the library
  optimizers the keys are the ones the seeds document for each (``rank``, ``block_size``, ...).
  An unknown key is a ``UsageError``.
* ``optim_target_modules``: the modules GaLore / APOLLO project (names, regular expressions, or
  ``"all-linear"``).

Optimizers from other libraries import them inside the factory: the registry has already told
the user which module is missing before this file is asked for one of them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
from typing import Any, Callable, Optional

import torch

from treadle.errors import PluginError, UsageError
from treadle.install_hints import install_command

OptimizerChoice = tuple[type, dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# optim_args
# ---------------------------------------------------------------------------------------------


class OptimArgs:
    """``--optim_args`` parsed into raw strings, consumed key by key by a factory.

    ``take`` removes a key and converts its value; ``finish`` fails on keys nobody took, so a
    typo is an error instead of being silently ignored.
    """

    def __init__(self, text: Optional[str], optim: str) -> None:
        self.optim = optim
        self.values: dict[str, str] = _split_pairs(text or "")

    def take(self, key: str, default: Any, convert: Callable[[str], Any] = str) -> Any:
        if key not in self.values:
            return default
        raw = self.values.pop(key)
        try:
            return convert(raw)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--optim_args: {key}={raw} is not valid for --optim {self.optim}: {exc}") from None

    def take_all(self) -> dict[str, Any]:
        """Every remaining key, values read as Python literals."""
        taken = {key: _literal(raw) for key, raw in self.values.items()}
        self.values.clear()
        return taken

    def finish(self, accepted: str = "") -> None:
        if self.values:
            hint = f" It accepts: {accepted}." if accepted else ""
            raise UsageError(f"--optim_args: --optim {self.optim} does not take {', '.join(sorted(self.values))}.{hint}")


def _split_pairs(text: str) -> dict[str, str]:
    """``"a=1,b=(2,3)"`` -> ``{"a": "1", "b": "(2,3)"}``: commas inside brackets do not split."""
    pairs: dict[str, str] = {}
    depth, start, items = 0, 0, []
    compact = text.replace(" ", "")
    for index, char in enumerate(compact):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(compact[start:index])
            start = index + 1
    items.append(compact[start:])
    for item in filter(None, items):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--optim_args: expected key=value pairs separated by commas, got {item!r} in {text!r}.")
        pairs[key] = value
    return pairs


_WORDS = {"true": True, "false": False, "none": None}


def _literal(raw: str) -> Any:
    """A value of ``--optim_args``: a Python literal when it reads as one, else the string itself."""
    if raw.lower() in _WORDS:
        return _WORDS[raw.lower()]
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _boolean(raw: str) -> bool:
    value = _literal(raw)
    if value in (0, 1) or isinstance(value, bool):
        return bool(value)
    raise ValueError("expected true or false")


def _torch_dtype(raw: str) -> torch.dtype:
    dtype = getattr(torch, raw, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{raw!r} is not a torch dtype name (e.g. float32, bfloat16)")
    return dtype


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------

Builder = Callable[..., OptimizerChoice]


def _factory(build: Builder, optim: str, **options: Any) -> Callable[..., OptimizerChoice]:
    """The registered function for ``--optim optim``: ``build(args, model, optim, **options)``."""

    def factory(args: Any, model: Any = None) -> OptimizerChoice:
        return build(args, model, optim, **options)

    factory.__name__ = factory.__qualname__ = optim
    factory.__doc__ = f"``--optim {optim}``: {(build.__doc__ or '').strip().splitlines()[0]}"
    return factory


def _adam_kwargs(args: Any) -> dict[str, Any]:
    return {"betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}


def _library_class(optim: str, module: str, attr: str, install: str) -> type:
    """Import ``module.attr`` for ``--optim optim``, turning a failure into one clear message."""
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise PluginError(
            f"--optim {optim} needs {module}.{attr}, which could not be imported ({type(exc).__name__}: {exc}). "
            f"Install it ({install}) and try again."
        ) from exc


def _needs_model(optim: str, model: Any) -> None:
    if model is None:
        raise UsageError(f"--optim {optim} needs the model to build its parameter groups; pass model= to the factory.")


# ---------------------------------------------------------------------------------------------
# torch.optim
# ---------------------------------------------------------------------------------------------


def _torch(args: Any, model: Any, optim: str, *, cls_name: str, adam: bool = False, **fixed: Any) -> OptimizerChoice:
    """An optimizer of ``torch.optim``, with any of its keywords settable through ``optim_args``."""
    cls = getattr(torch.optim, cls_name, None)
    if cls is None:
        raise UsageError(f"--optim {optim} needs torch.optim.{cls_name}, which torch {torch.__version__} does not have.")
    kwargs: dict[str, Any] = {"lr": args.learning_rate, "weight_decay": args.weight_decay, **fixed}
    if adam:
        kwargs.update(_adam_kwargs(args))
    extra = OptimArgs(args.optim_args, optim).take_all()
    accepted = [
        name
        for name, p in inspect.signature(cls).parameters.items()
        if name != "params" and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unknown = sorted(set(extra) - set(accepted))
    if unknown:
        raise UsageError(
            f"--optim_args: torch.optim.{cls_name} (--optim {optim}) has no option "
            f"{', '.join(unknown)}. Its options are: {', '.join(accepted)}."
        )
    kwargs.update(extra)
    return cls, kwargs


adamw_torch = _factory(_torch, "adamw_torch", cls_name="AdamW", adam=True)
adamw_torch_fused = _factory(_torch, "adamw_torch_fused", cls_name="AdamW", adam=True, fused=True)
adafactor = _factory(_torch, "adafactor", cls_name="Adafactor")  # torch >= 2.5
sgd = _factory(_torch, "sgd", cls_name="SGD")
adagrad = _factory(_torch, "adagrad", cls_name="Adagrad")
rmsprop = _factory(_torch, "rmsprop", cls_name="RMSprop")
adam_torch = _factory(_torch, "adam_torch", cls_name="Adam", adam=True)
adamax_torch = _factory(_torch, "adamax_torch", cls_name="Adamax", adam=True)
nadam_torch = _factory(_torch, "nadam_torch", cls_name="NAdam", adam=True)
radam_torch = _factory(_torch, "radam_torch", cls_name="RAdam", adam=True)


# ---------------------------------------------------------------------------------------------
# Vendor AdamW implementations
# ---------------------------------------------------------------------------------------------


def _vendor_adam(args: Any, model: Any, optim: str, *, module: str, attr: str, install: str) -> OptimizerChoice:
    """A vendor's AdamW: the learning rate and the Adam hyperparameters, nothing else."""
    cls = _library_class(optim, module, attr, install)
    OptimArgs(args.optim_args, optim).finish()
    return cls, {"lr": args.learning_rate, **_adam_kwargs(args)}


adamw_torch_xla = _factory(
    _vendor_adam, "adamw_torch_xla", module="torch_xla.amp.syncfree", attr="AdamW", install=install_command("treadle-xla")
)
adamw_torch_npu_fused = _factory(
    _vendor_adam, "adamw_torch_npu_fused", module="torch_npu.optim", attr="NpuFusedAdamW", install="pip install torch-npu"
)
adamw_apex_fused = _factory(
    _vendor_adam, "adamw_apex_fused", module="apex.optimizers", attr="FusedAdam", install="see https://github.com/NVIDIA/apex"
)


def _anyprecision(args: Any, model: Any, optim: str) -> OptimizerChoice:
    """torchdistx's AdamW with chosen state dtypes and optional Kahan summation."""
    cls = _library_class(optim, "torchdistx.optimizers", "AnyPrecisionAdamW", "see https://github.com/pytorch/torchdistx")
    options = OptimArgs(args.optim_args, optim)
    kwargs = {
        "lr": args.learning_rate,
        **_adam_kwargs(args),
        "use_kahan_summation": options.take("use_kahan_summation", False, _boolean),
        "momentum_dtype": options.take("momentum_dtype", torch.float32, _torch_dtype),
        "variance_dtype": options.take("variance_dtype", torch.float32, _torch_dtype),
        "compensation_buffer_dtype": options.take("compensation_buffer_dtype", torch.bfloat16, _torch_dtype),
    }
    options.finish("use_kahan_summation, momentum_dtype, variance_dtype, compensation_buffer_dtype")
    return cls, kwargs


adamw_anyprecision = _factory(_anyprecision, "adamw_anyprecision")


def _torchao(args: Any, model: Any, optim: str, *, attr: str) -> OptimizerChoice:
    """torchao's low-bit AdamW (optimizer states quantised in blocks)."""
    # torchao moved its low-bit optimizers out of the prototype namespace in 0.11.
    try:
        module = "torchao.optim" if importlib.util.find_spec("torchao.optim") else "torchao.prototype.low_bit_optim"
    except (ImportError, ValueError):
        module = "torchao.optim"  # torchao itself is missing (or odd): _library_class says so
    cls = _library_class(optim, module, attr, "pip install torchao")
    options = OptimArgs(args.optim_args, optim)
    kwargs = {
        "lr": args.learning_rate,
        **_adam_kwargs(args),
        "block_size": options.take("block_size", 256, int),
        "bf16_stochastic_round": options.take("bf16_stochastic_round", False, _boolean),
    }
    options.finish("block_size, bf16_stochastic_round")
    return cls, kwargs


adamw_torch_4bit = _factory(_torchao, "adamw_torch_4bit", attr="AdamW4bit")
adamw_torch_8bit = _factory(_torchao, "adamw_torch_8bit", attr="AdamW8bit")


# ---------------------------------------------------------------------------------------------
# bitsandbytes
# ---------------------------------------------------------------------------------------------


def _bitsandbytes(args: Any, model: Any, optim: str) -> OptimizerChoice:
    """bitsandbytes: the name says the algorithm, the bit width and whether states are paged."""
    options = OptimArgs(args.optim_args, optim)
    kwargs: dict[str, Any] = {"lr": args.learning_rate, "optim_bits": 8 if "8bit" in optim else 32}
    if "ademamix" in optim:
        cls = _library_class(optim, "bitsandbytes.optim", "AdEMAMix", "pip install bitsandbytes")
        kwargs["betas"] = (
            options.take("beta1", args.adam_beta1, float),
            options.take("beta2", args.adam_beta2, float),
            options.take("beta3", 0.9999, float),
        )
        kwargs["alpha"] = options.take("alpha", 5.0, float)
        kwargs["eps"] = options.take("eps", args.adam_epsilon, float)
        for key in ("t_alpha", "t_beta3"):
            value = options.take(key, None, int)
            if value is not None:
                kwargs[key] = value
        options.finish("beta1, beta2, beta3, alpha, eps, t_alpha, t_beta3")
    elif "lion" in optim:
        cls = _library_class(optim, "bitsandbytes.optim", "Lion", "pip install bitsandbytes")
        kwargs["betas"] = (args.adam_beta1, args.adam_beta2)
        options.finish()
    elif "rmsprop" in optim:
        cls = _library_class(optim, "bitsandbytes.optim", "RMSprop", "pip install bitsandbytes")
        kwargs.update(options.take_all())  # RMSprop's own keywords (alpha, momentum, ...) pass through
        return cls, kwargs  # bitsandbytes' RMSprop has no paged variant
    else:
        cls = _library_class(optim, "bitsandbytes.optim", "AdamW", "pip install bitsandbytes")
        kwargs.update(_adam_kwargs(args))
        options.finish()
    kwargs["is_paged"] = "paged" in optim
    return cls, kwargs


adamw_bnb_8bit = _factory(_bitsandbytes, "adamw_bnb_8bit")
adamw_8bit = _factory(_bitsandbytes, "adamw_8bit")
paged_adamw_32bit = _factory(_bitsandbytes, "paged_adamw_32bit")
paged_adamw_8bit = _factory(_bitsandbytes, "paged_adamw_8bit")
ademamix = _factory(_bitsandbytes, "ademamix")
ademamix_8bit = _factory(_bitsandbytes, "ademamix_8bit")
paged_ademamix_32bit = _factory(_bitsandbytes, "paged_ademamix_32bit")
paged_ademamix_8bit = _factory(_bitsandbytes, "paged_ademamix_8bit")
lion_32bit = _factory(_bitsandbytes, "lion_32bit")
lion_8bit = _factory(_bitsandbytes, "lion_8bit")
paged_lion_32bit = _factory(_bitsandbytes, "paged_lion_32bit")
paged_lion_8bit = _factory(_bitsandbytes, "paged_lion_8bit")
rmsprop_bnb = _factory(_bitsandbytes, "rmsprop_bnb")
rmsprop_bnb_8bit = _factory(_bitsandbytes, "rmsprop_bnb_8bit")
rmsprop_bnb_32bit = _factory(_bitsandbytes, "rmsprop_bnb_32bit")


# ---------------------------------------------------------------------------------------------
# Low-rank projection optimizers (GaLore, APOLLO)
# ---------------------------------------------------------------------------------------------


def target_linear_weights(model: torch.nn.Module, targets: Any, optim: str) -> list[str]:
    """Names of the ``nn.Linear`` weights that ``optim_target_modules`` selects.

    ``targets`` is a name or a list of them; each matches a module name exactly, as a substring,
    or as a regular expression over the whole name. ``all-linear`` selects every linear layer.
    """
    if not targets:
        raise UsageError(
            f"--optim {optim} projects chosen linear layers: set --optim_target_modules "
            f"(module names, regular expressions, or all-linear)."
        )
    patterns = [targets] if isinstance(targets, str) else [str(t) for t in targets]
    all_linear = any(p.strip().replace("_", "-") == "all-linear" for p in patterns)

    def selected(name: str) -> bool:
        return all_linear or any(p == name or p in name or re.fullmatch(p, name) for p in patterns)

    names = [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and selected(name)
    ]
    if not names:
        raise UsageError(
            f"--optim_target_modules {', '.join(patterns)} selects no nn.Linear layer of the model, "
            f"so --optim {optim} has nothing to project."
        )
    return names


def _low_rank(
    args: Any, model: Any, optim: str, cls: type, projection: dict[str, Any], kwargs: dict[str, Any]
) -> OptimizerChoice:
    """Put the projected weights in their own group carrying ``projection``; layer-wise if the name says so."""
    _needs_model(optim, model)
    targets = set(target_linear_weights(model, args.optim_target_modules, optim))
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if n not in targets]},
        {"params": [p for n, p in named if n in targets], **projection},
    ]
    if not optim.endswith("_layerwise"):
        return cls, {"params": groups, **kwargs}
    if args.world_size > 1:
        raise UsageError(f"--optim {optim} steps each layer during backward and cannot run with several processes.")
    if args.gradient_accumulation_steps != 1:
        raise UsageError(f"--optim {optim} steps each layer during backward, so --gradient_accumulation_steps must be 1.")
    from treadle.builtin.layerwise import LayerwiseOptimizer

    return LayerwiseOptimizer, {"params": groups, "optimizer_cls": cls, **kwargs}


def _galore(args: Any, model: Any, optim: str, *, attr: str) -> OptimizerChoice:
    """GaLore: gradients of the target layers projected to a low rank."""
    cls = _library_class(optim, "galore_torch", attr, "pip install galore-torch")
    options = OptimArgs(args.optim_args, optim)
    projection = {
        "rank": options.take("rank", 128, int),
        "update_proj_gap": options.take("update_proj_gap", 200, int),
        "scale": options.take("scale", 0.25, float),
        "proj_type": options.take("proj_type", "std"),
    }
    options.finish("rank, update_proj_gap, scale, proj_type")
    kwargs: dict[str, Any] = {"lr": args.learning_rate}
    if attr == "GaLoreAdafactor":  # the schedule drives the rate: no relative steps, no parameter scaling
        kwargs.update(scale_parameter=False, relative_step=False)
    return _low_rank(args, model, optim, cls, projection, kwargs)


galore_adamw = _factory(_galore, "galore_adamw", attr="GaLoreAdamW")
galore_adamw_8bit = _factory(_galore, "galore_adamw_8bit", attr="GaLoreAdamW8bit")
galore_adafactor = _factory(_galore, "galore_adafactor", attr="GaLoreAdafactor")
galore_adamw_layerwise = _factory(_galore, "galore_adamw_layerwise", attr="GaLoreAdamW")
galore_adamw_8bit_layerwise = _factory(_galore, "galore_adamw_8bit_layerwise", attr="GaLoreAdamW8bit")
galore_adafactor_layerwise = _factory(_galore, "galore_adafactor_layerwise", attr="GaLoreAdafactor")


def _apollo(args: Any, model: Any, optim: str) -> OptimizerChoice:
    """APOLLO: AdamW with learning-rate scaling estimated in a random low-rank space."""
    cls = _library_class(optim, "apollo_torch", "APOLLOAdamW", "pip install apollo-torch")
    options = OptimArgs(args.optim_args, optim)
    projection = {
        "rank": options.take("rank", 128, int),
        "proj": options.take("proj", "random"),
        "scale_type": options.take("scale_type", "channel"),
        "update_proj_gap": options.take("update_proj_gap", 200, int),
        "scale": options.take("scale", 1.0, float),
        "proj_type": options.take("proj_type", "std"),
    }
    options.finish("rank, proj, scale_type, update_proj_gap, scale, proj_type")
    return _low_rank(args, model, optim, cls, projection, {"lr": args.learning_rate, **_adam_kwargs(args)})


apollo_adamw = _factory(_apollo, "apollo_adamw")
apollo_adamw_layerwise = _factory(_apollo, "apollo_adamw_layerwise")


# ---------------------------------------------------------------------------------------------
# Other libraries
# ---------------------------------------------------------------------------------------------


def _lomo(args: Any, model: Any, optim: str, *, attr: str) -> OptimizerChoice:
    """LOMO fuses backward and update: it takes the model, and the loop must call its ``fused_backward``."""
    cls = _library_class(optim, "lomo_optim", attr, "pip install lomo-optim")
    _needs_model(optim, model)
    options = OptimArgs(args.optim_args, optim)
    return cls, {"params": model, "lr": args.learning_rate, **options.take_all()}


lomo = _factory(_lomo, "lomo", attr="Lomo")
adalomo = _factory(_lomo, "adalomo", attr="AdaLomo")


def _grokadamw(args: Any, model: Any, optim: str) -> OptimizerChoice:
    """GrokAdamW: AdamW that amplifies slow-moving gradient components."""
    cls = _library_class(optim, "grokadamw", "GrokAdamW", "pip install grokadamw")
    options = OptimArgs(args.optim_args, optim)
    kwargs = {
        "lr": args.learning_rate,
        "alpha_init": options.take("alpha_init", 0.98, float),
        "lamb": options.take("lamb", 2.0, float),
        "gamma": options.take("gamma", 0.1, float),
        "grokking_signal_decay_rate": options.take("grokking_signal_decay_rate", 0.1, float),
        "gradient_clipping": options.take("gradient_clipping", 1.0, float),
    }
    options.finish("alpha_init, lamb, gamma, grokking_signal_decay_rate, gradient_clipping")
    return cls, kwargs


grokadamw = _factory(_grokadamw, "grokadamw")


def _schedule_free(args: Any, model: Any, optim: str, *, attr: str, adam: bool, warmup: bool) -> OptimizerChoice:
    """Schedule-free optimizers: they replace the schedule; the loop must call their ``train()`` / ``eval()``."""
    cls = _library_class(optim, "schedulefree", attr, "pip install schedulefree")
    options = OptimArgs(args.optim_args, optim)
    kwargs: dict[str, Any] = {"lr": args.learning_rate, "weight_decay": args.weight_decay}
    if adam:
        kwargs.update(_adam_kwargs(args))
    if warmup:
        kwargs["warmup_steps"] = args.warmup_steps
    kwargs["weight_lr_power"] = options.take("weight_lr_power", 2.0, float)
    kwargs["r"] = options.take("r", 0.0, float)
    options.finish("weight_lr_power, r")
    return cls, kwargs


schedule_free_adamw = _factory(_schedule_free, "schedule_free_adamw", attr="AdamWScheduleFree", adam=True, warmup=True)
# RAdam needs no warmup: its rectification plays that part.
schedule_free_radam = _factory(_schedule_free, "schedule_free_radam", attr="RAdamScheduleFree", adam=True, warmup=False)
schedule_free_sgd = _factory(_schedule_free, "schedule_free_sgd", attr="SGDScheduleFree", adam=False, warmup=True)


def _stable_adamw(args: Any, model: Any, optim: str) -> OptimizerChoice:
    """torch-optimi's StableAdamW: AdamW with update clipping."""
    cls = _library_class(optim, "optimi", "StableAdamW", "pip install torch-optimi")
    options = OptimArgs(args.optim_args, optim)
    kwargs = {
        "lr": args.learning_rate,
        **_adam_kwargs(args),
        "weight_decay": args.weight_decay,
        "decouple_lr": options.take("decouple_lr", False, _boolean),
        "max_lr": options.take("max_lr", None, float),
        "kahan_sum": options.take("kahan_sum", None, _boolean),
    }
    options.finish("decouple_lr, max_lr, kahan_sum")
    return cls, kwargs


stable_adamw = _factory(_stable_adamw, "stable_adamw")
