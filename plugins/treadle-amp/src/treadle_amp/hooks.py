"""treadle-amp's registrations: four precisions named by string, and the checks that need no torch.

The implementations live in ``treadle_amp.precision`` (torch, imported on selection); this
module is what the entry point loads for ``treadle --help`` and ``treadle plugins``, so it imports
only ``treadle.hookimpl``.
"""

from __future__ import annotations

from treadle import hookimpl

_IMPL = "treadle_amp.precision"

PRECISIONS = {
    # name: (class, aliases, description)
    "fp16": ("Fp16MixedPrecision", ("16-mixed",), "float16 autocast, float32 weights, a loss scaler (--fp16)"),
    "bf16": ("MixedPrecision", ("bf16-mixed",), "bfloat16 autocast, float32 weights (--bf16)"),
    "fp16-true": ("TruePrecision", ("16-true",), "weights and activations in float16, no loss scaler (memory)"),
    "bf16-true": ("TruePrecision", (), "weights and activations in bfloat16 (memory)"),
}
"""What ``--precision`` can name from this plugin (the seeds' --fp16 / --bf16 select the first two)."""


@hookimpl
def treadle_register_precisions(register):
    for name, (cls, aliases, description) in PRECISIONS.items():
        dtype = "float16" if name.startswith("fp16") else "bfloat16"
        register(name, f"{_IMPL}:{cls}", aliases=aliases, description=description, init={"dtype": dtype})


@hookimpl
def treadle_add_arguments(schema):
    schema.add("amp_init_scale", type=float, default=2.0**16,
               help="fp16: the loss scale to start from (GradScaler's init_scale); it halves on each overflow")
    schema.add("amp_growth_interval", type=int, default=2000,
               help="fp16: after this many steps without overflow the loss scale doubles")


def _amp_names() -> set[str]:
    return {n for name, (_, aliases, _) in PRECISIONS.items() for n in (name, *aliases)}


@hookimpl
def treadle_validate_arguments(args):
    """``--half_precision_backend`` values this plugin cannot honour, found before anything runs."""
    problems = []
    uses_amp = args.precision in _amp_names() or args.fp16_full_eval or args.bf16_full_eval
    if uses_amp and args.half_precision_backend == "apex":
        problems.append(
            "half_precision_backend: 'apex' (NVIDIA apex) is not supported; treadle-amp uses torch.amp: "
            "choose auto (the run's device), cuda_amp or cpu_amp"
        )
    if not args.amp_init_scale > 0:
        problems.append(f"--amp_init_scale must be positive, got {args.amp_init_scale}")
    if args.amp_growth_interval < 1:
        problems.append(f"--amp_growth_interval must be at least 1, got {args.amp_growth_interval}")
    return problems or None


@hookimpl
def treadle_report_env():
    from treadle_amp.capability import autocast_summary

    return [("treadle-amp autocast", autocast_summary())]
