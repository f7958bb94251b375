"""treadle-deepspeed's registration: the ``deepspeed`` strategy, and the config checked at parse time.

The core already selects ``--strategy deepspeed`` when ``--deepspeed`` names a config. Here the
config is read (JSON, standard library only: no torch, no deepspeed at ``--help``), its numbers
are adopted by the arguments the user left alone, and a number that contradicts an argument the
user set is reported with the key that holds it. ``parallelism_config`` (sequence parallel
``sp_size``) is checked here too (``treadle_deepspeed.options``).
"""

from __future__ import annotations

from typing import Any

from treadle import hookimpl
from treadle.errors import UsageError


def _selected(args: Any) -> bool:
    strategy = getattr(args.strategy, "value", args.strategy)
    return strategy == "deepspeed" or (strategy is None and args.deepspeed is not None)


@hookimpl
def treadle_add_arguments(schema: Any) -> None:
    schema.add("deepspeed_zero3_init", type=bool, default=True,
               help="under ZeRO-3, build the model inside deepspeed.zero.Init so that no process ever holds all of it "
                    "(transformers' from_pretrained loads into the partitions); false builds it whole on every process "
                    "first, for code that edits weights right after building them")


@hookimpl
def treadle_register_strategies(register: Any) -> None:
    register(
        "deepspeed",
        "treadle_deepspeed.strategy:DeepSpeedStrategy",
        requires=("deepspeed",),
        description="DeepSpeed's engine: ZeRO stages 0-3, CPU/NVMe offload, its own fp16/bf16 and checkpoints, "
        "ALST/Ulysses sequence parallel (parallelism_config sp_size)",
    )


@hookimpl
def treadle_adjust_arguments(args: Any, explicit: frozenset[str]) -> None:
    if not _selected(args) or args.deepspeed is None:
        return
    from treadle_deepspeed.config import adopt_config_values, read_config

    problems = adopt_config_values(args, explicit, read_config(args.deepspeed))
    if problems:
        raise UsageError("\n".join(problems))


@hookimpl
def treadle_validate_arguments(args: Any) -> list[str] | None:
    """``parallelism_config`` under the deepspeed strategy: sizes that fit the world, dimensions it builds."""
    if not _selected(args):
        return None
    from treadle_deepspeed.options import check_arguments

    return check_arguments(args) or None


@hookimpl
def treadle_report_env() -> list[tuple[str, str]] | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return [("deepspeed", version("deepspeed"))]
    except PackageNotFoundError:
        return [("deepspeed", "not installed")]
