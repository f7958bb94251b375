"""``parallelism_config``: the sizes of an N-D device mesh, read and checked without torch.

``parallelism_config`` is a core argument (the seeds' ``get_tp_size`` / ``get_cp_size`` /
``get_sp_size`` and ``get_total_train_batch_size`` count its dimensions), so its reading lives
here and every strategy that builds meshes shares it. A run on ``world_size`` processes is laid
out as ``dp_replicate x dp_shard x cp x sp x tp``; ranks of one ``cp x sp x tp`` block compute on
the same batch. The value may be a dict (or JSON text / a JSON file, which the core has already
read), or accelerate's ``ParallelismConfig`` object, whose attribute names are the keys below.
``dp_shard_size`` may be left out (or -1): it takes whatever the other sizes leave of the world
size.

Which dimensions a strategy can build is its own business: it calls ``unsupported`` with the ones
it offers and reports the rest (the FSDP2 strategy builds tp and cp on torch's DeviceMesh, the
DeepSpeed one ALST/Ulysses sequence parallel).

Only the standard library is used, so the arguments are checked at parse time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SIZE_KEYS = ("dp_replicate_size", "dp_shard_size", "tp_size", "cp_size", "sp_size")
HANDLER_KEYS = ("tp_handler", "cp_handler", "sp_handler")
"""accelerate's per-dimension settings objects; read as dicts of their set fields."""
KNOWN_KEYS = (*SIZE_KEYS, "tp_plan", *HANDLER_KEYS, "cp_backend", "sp_backend")
MESH_DIMS = ("dp_replicate", "dp_shard", "cp", "tp")


class ParallelismError(ValueError):
    """The configuration asks for a mesh that cannot be built; ``problems`` holds one message each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class Layout:
    """The mesh sizes of one run (``dp_shard`` None until the world size is known)."""

    dp_replicate: int = 1
    dp_shard: int | None = None
    tp: int = 1
    cp: int = 1
    sp: int = 1
    tp_plan: dict[str, str] | None = None
    """A user's plan (module-name pattern -> style); None: the model's own ``_tp_plan``."""
    extra: dict[str, Any] = field(default_factory=dict)

    def resolve(self, world_size: int) -> Layout:
        """Fill in ``dp_shard`` and check the product against ``world_size`` (raises ParallelismError)."""
        fixed = self.dp_replicate * self.tp * self.cp * self.sp
        shard = self.dp_shard
        if shard is None:
            if world_size % fixed:
                raise ParallelismError([
                    f"parallelism_config: {world_size} processes cannot be split into dp_replicate_size="
                    f"{self.dp_replicate} x tp_size={self.tp} x cp_size={self.cp} x sp_size={self.sp} (= {fixed}); "
                    f"the world size must be a multiple of {fixed}"
                ])
            shard = world_size // fixed
        if fixed * shard != world_size:
            raise ParallelismError([
                f"parallelism_config: dp_replicate_size={self.dp_replicate} x dp_shard_size={shard} x tp_size={self.tp} "
                f"x cp_size={self.cp} x sp_size={self.sp} = {fixed * shard}, but the run has {world_size} processes; "
                "the sizes must multiply to the world size (leave dp_shard_size out to have it inferred)"
            ])
        return Layout(self.dp_replicate, shard, self.tp, self.cp, self.sp, self.tp_plan, dict(self.extra))

    @property
    def dp_size(self) -> int:
        """Data-parallel replicas: processes that see different batches."""
        return self.dp_replicate * (self.dp_shard or 1)

    def dp_rank(self, global_rank: int) -> int:
        """This process's data-parallel index (ranks of one tp x cp block share it)."""
        return global_rank // (self.tp * self.cp * self.sp)

    def shape(self) -> tuple[int, int, int, int]:
        """The (dp_replicate, dp_shard, cp, tp) mesh of a strategy without a sequence-parallel dimension."""
        return (self.dp_replicate, self.dp_shard or 1, self.cp, self.tp)

    def sizes(self) -> dict[str, int]:
        """Every dimension's size, by its ``parallelism_config`` key."""
        return {"dp_replicate_size": self.dp_replicate, "dp_shard_size": self.dp_shard or 1,
                "tp_size": self.tp, "cp_size": self.cp, "sp_size": self.sp}


def unsupported(layout: Layout | None, offered: tuple[str, ...], strategy: str, hint: str = "") -> list[str]:
    """One message per dimension above 1 that ``strategy`` cannot build (``offered``: its size keys)."""
    if layout is None:
        return []
    problems = []
    for key, size in layout.sizes().items():
        if size > 1 and key not in offered:
            problems.append(
                f"parallelism_config: {key}={size} is not something the {strategy} strategy can build "
                f"(it offers {', '.join(offered)}){'; ' + hint if hint else ''}"
            )
    return problems


def is_config_object(value: Any) -> bool:
    """Whether ``value`` is accelerate's ``ParallelismConfig`` (or an object with its attribute names)."""
    return not isinstance(value, (dict, str, type)) and value is not None and any(hasattr(value, k) for k in SIZE_KEYS)


def as_dict(value: Any) -> dict[str, Any] | None:
    """A dict from a dict, or from accelerate's ``ParallelismConfig`` (its attributes); None stays None.

    The handlers accelerate fills in (``TorchTensorParallelConfig``, ``TorchContextParallelConfig``,
    ``DeepSpeedSequenceParallelConfig``) become dicts of their set fields, so the arguments, which
    checkpoints and reporters save as JSON, stay plain values.
    """
    if value is None or isinstance(value, dict):
        return value
    if is_config_object(value):
        return {key: _plain(getattr(value, key)) for key in KNOWN_KEYS if getattr(value, key, None) is not None}
    raise ParallelismError([
        f"parallelism_config: expected a JSON object, a JSON file or accelerate's ParallelismConfig, got {type(value).__name__}"
    ])


def _plain(value: Any) -> Any:
    """JSON-ready ``value``: a settings object is the dict of its public, set attributes."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif hasattr(value, "__dict__"):
        fields = dict(vars(value))
    else:
        return str(value)
    return {key: _plain(item) for key, item in fields.items() if not key.startswith("_") and item is not None}


def layout(value: Any, world_size: int | None = None) -> Layout | None:
    """The Layout a ``parallelism_config`` value asks for (resolved when ``world_size`` is given)."""
    config = as_dict(value)
    if config is None:
        return None
    problems: list[str] = []
    unknown = sorted(k for k in config if k not in KNOWN_KEYS)
    if unknown:
        problems.append(f"parallelism_config: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(KNOWN_KEYS)}")
    sizes: dict[str, int | None] = {}
    for key in SIZE_KEYS:
        raw = config.get(key)
        if raw is None or (key == "dp_shard_size" and raw == -1):
            sizes[key] = None if key == "dp_shard_size" else 1
        elif isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
            problems.append(f"parallelism_config: {key} must be a whole number >= 1, got {raw!r}")
            sizes[key] = 1
        else:
            sizes[key] = raw
    backend = config.get("cp_backend")
    if backend not in (None, "torch"):
        problems.append(f"parallelism_config: cp_backend={backend!r}; context parallel runs on torch's context_parallel "
                        "(cp_backend \"torch\", or leave it out)")
    for key in HANDLER_KEYS:
        if config.get(key) is not None and not isinstance(config[key], dict):
            problems.append(f"parallelism_config: {key} must be a JSON object of its settings, got {config[key]!r}")
    plan = config.get("tp_plan")
    if plan is not None and not (isinstance(plan, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in plan.items())):
        problems.append("parallelism_config: tp_plan must map module-name patterns to styles, e.g. {\"layers.*.q\": \"colwise\"}")
        plan = None
    result = Layout(
        dp_replicate=sizes["dp_replicate_size"] or 1, dp_shard=sizes["dp_shard_size"], tp=sizes["tp_size"] or 1,
        cp=sizes["cp_size"] or 1, sp=sizes["sp_size"] or 1, tp_plan=plan,
        extra={k: v for k, v in config.items() if k in (*HANDLER_KEYS, "cp_backend", "sp_backend")},
    )
    if problems:
        raise ParallelismError(problems)
    return result.resolve(world_size) if world_size is not None else result


def check_arguments(args: Any, offered: tuple[str, ...] = SIZE_KEYS, strategy: str = "", hint: str = "") -> list[str]:
    """Parse-time problems of ``args.parallelism_config`` (the world size too, when a launcher set
    WORLD_SIZE), and the dimensions above 1 that ``strategy`` does not offer."""
    import os

    world = os.environ.get("WORLD_SIZE", "").strip()
    try:
        result = layout(args.load_json_field("parallelism_config"), int(world) if world.isdigit() else None)
    except OSError as exc:
        return [f"parallelism_config: cannot read {args.parallelism_config}: {exc}"]
    except ParallelismError as exc:
        return exc.problems
    return unsupported(result, offered, strategy, hint)


def strategy_layout(args: Any, offered: tuple[str, ...], strategy: str, hint: str = "") -> Layout | None:
    """The layout ``args.parallelism_config`` asks of ``strategy`` (None without one), for its
    constructor: a bad value or a dimension it does not offer is a UsageError naming each problem."""
    from treadle.errors import UsageError

    try:
        result = layout(args.load_json_field("parallelism_config"))
    except ParallelismError as exc:
        raise UsageError("\n".join(exc.problems)) from None
    problems = unsupported(result, offered, strategy, hint)
    if problems:
        raise UsageError("\n".join(problems))
    return result


def resolved(result: Layout, world_size: int) -> Layout:
    """``result`` with ``dp_shard`` filled in for ``world_size``; sizes that do not fit are a UsageError."""
    from treadle.errors import UsageError

    try:
        return result.resolve(world_size)
    except ParallelismError as exc:
        raise UsageError("\n".join(exc.problems)) from None
