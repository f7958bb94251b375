"""The seeds' ``--fsdp`` words and ``fsdp_config`` keys, translated into FSDP2 settings.

FSDP2 (``torch.distributed.fsdp.fully_shard``) has fewer knobs than FSDP1: a sharding mode is a
device-mesh shape plus ``reshard_after_forward``; flat parameters, the all-gather rate limiter
and backward-prefetch modes are gone. Every option and key the seeds document is therefore
either mapped onto FSDP2 here or refused with a message that names it and says what to do;
nothing is quietly ignored. Only the standard library is imported, so the argument checks run
at parse time (``treadle --help`` and ``treadle train`` before torch is loaded).

The core has already turned ``fsdp_config`` into a dict (JSON file, JSON text or dict) and
dropped the v4 ``fsdp_`` key prefix; ``settings`` accepts either spelling anyway, so a plugin
user calling it with a raw config gets the same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

OFFERED = ("dp_replicate_size", "dp_shard_size", "tp_size", "cp_size")
"""The ``parallelism_config`` dimensions the fsdp strategy builds (see ``treadle.parallelism``)."""
SP_HINT = ("sp_size asks for ALST/Ulysses sequence parallelism, which DeepSpeed's engine provides "
           "(--deepspeed ds_config.json with treadle-deepspeed installed)")



def handler_problems(extra: dict[str, Any]) -> list[str]:
    """Settings in ``parallelism_config``'s handlers (accelerate's names) that the fsdp strategy cannot honour.

    ``extra`` is a Layout's ``extra`` (handlers as dicts). ``cp_handler`` ``cp_comm_strategy`` is
    honoured (context_parallel.rotate_method); async tensor parallel is not built.
    """
    tp = extra.get("tp_handler") or {}
    if tp.get("enable_async_tp"):
        return ["parallelism_config: tp_handler enable_async_tp=true asks for async tensor parallel (compiled, "
                "micro-pipelined collectives over CUDA symmetric memory), which the fsdp strategy does not build; "
                "leave enable_async_tp false (tensor parallel then runs with torch's plain collectives)"]
    return []


# How each sharding mode is laid out on FSDP2: (mesh kind, reshard_after_forward).
#   "shard": a 1-D mesh over every process; "hybrid": (nodes, processes per node), replicated
#   across nodes and sharded within one; "replicate": (processes, 1), nothing sharded.
SHARDING_MODES = {
    "full_shard": ("shard", True),
    "shard_grad_op": ("shard", False),
    "hybrid_shard": ("hybrid", True),
    "hybrid_shard_zero2": ("hybrid", False),
    "no_shard": ("replicate", True),
}
OPTION_WORDS = (*SHARDING_MODES, "offload", "auto_wrap")

# accelerate's spelling of the same modes (fsdp_config "sharding_strategy": name or number).
_ACCELERATE_SHARDING = {
    "1": "full_shard", "full_shard": "full_shard",
    "2": "shard_grad_op", "shard_grad_op": "shard_grad_op",
    "3": "no_shard", "no_shard": "no_shard",
    "4": "hybrid_shard", "hybrid_shard": "hybrid_shard",
    "5": "hybrid_shard_zero2", "hybrid_shard_zero2": "hybrid_shard_zero2", "_hybrid_shard_zero2": "hybrid_shard_zero2",
}
_STATE_DICT_TYPES = {"sharded_state_dict": "sharded", "sharded": "sharded", "full_state_dict": "full", "full": "full"}
_WRAP_POLICIES = {"transformer_based_wrap": "transformer", "size_based_wrap": "size", "no_wrap": "none"}

KNOWN_KEYS = (
    "version", "min_num_params", "transformer_layer_cls_to_wrap", "backward_prefetch", "forward_prefetch",
    "limit_all_gathers", "use_orig_params", "sync_module_states", "cpu_ram_efficient_loading",
    "activation_checkpointing", "state_dict_type", "reshard_after_forward", "offload_params",
    "sharding_strategy", "auto_wrap_policy", "xla", "xla_fsdp_settings", "xla_fsdp_grad_ckpt",
)


@dataclass
class FsdpSettings:
    """What the strategy builds, decided once from the arguments."""

    mode: str = "full_shard"
    reshard_after_forward: Union[bool, int] = True
    offload: bool = False
    wrap: str = "none"  # "none" | "transformer" | "size" | "auto" (the model's _no_split_modules)
    layer_classes: list[str] = field(default_factory=list)
    min_num_params: int = 0
    forward_prefetch: bool = False
    activation_checkpointing: bool = False
    sync_module_states: bool = True
    meta_init: bool = False  # cpu_ram_efficient_loading
    state_dict_type: str = "sharded"

    @property
    def mesh_kind(self) -> str:
        return SHARDING_MODES[self.mode][0]


class FsdpOptionError(ValueError):
    """One or more FSDP options cannot be honoured; ``problems`` holds one message each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def settings(options: Optional[list[str]], config: Optional[dict[str, Any]]) -> FsdpSettings:
    """Translate ``--fsdp`` words and an ``fsdp_config`` dict; raise FsdpOptionError listing every problem."""
    problems: list[str] = []
    words = [w for w in (options or []) if w]
    config = {(k[5:] if k.startswith("fsdp_") else k): v for k, v in (config or {}).items()}
    result = FsdpSettings()

    unknown_words = [w for w in words if w not in OPTION_WORDS]
    if unknown_words:
        problems.append(f"fsdp: unknown option(s) {', '.join(map(repr, unknown_words))}; known: {', '.join(OPTION_WORDS)}")
    modes = [w for w in words if w in SHARDING_MODES]
    if "sharding_strategy" in config:
        named = _ACCELERATE_SHARDING.get(str(config["sharding_strategy"]).strip().lower())
        if named is None:
            problems.append(
                f"fsdp_config: sharding_strategy={config['sharding_strategy']!r} is not a sharding mode "
                f"(use one of {', '.join(SHARDING_MODES)}, or accelerate's 1-5)"
            )
        elif modes and named not in modes:
            problems.append(f"fsdp_config: sharding_strategy={config['sharding_strategy']!r} contradicts fsdp={' '.join(words)!r}")
        else:
            modes = modes or [named]
    if len(set(modes)) > 1:
        problems.append(f"fsdp: {' and '.join(map(repr, sorted(set(modes))))} are alternative sharding modes; pick one")
    elif modes:
        result.mode = modes[0]
    result.reshard_after_forward = SHARDING_MODES[result.mode][1]
    result.offload = "offload" in words or bool(config.get("offload_params", False))
    if result.offload and result.mode == "no_shard":
        problems.append("fsdp: 'offload' keeps the shards on the CPU, but 'no_shard' has no shards; use 'full_shard offload'")

    unknown = sorted(k for k in config if k not in KNOWN_KEYS)
    if unknown:
        problems.append(
            f"fsdp_config: unknown key(s) {', '.join(map(repr, unknown))}; treadle-fsdp knows: {', '.join(sorted(KNOWN_KEYS))}"
        )
    _refuse_fsdp1(config, problems)
    _wrapping(words, config, result, problems)
    _behaviour(config, result, problems)
    if problems:
        raise FsdpOptionError(problems)
    return result


def _refuse_fsdp1(config: dict[str, Any], problems: list[str]) -> None:
    """Settings that belong to FSDP1 or to XLA's FSDP, which this plugin does not offer."""
    version = config.get("version")
    if version is not None and str(version).strip() != "2":
        problems.append(
            f"fsdp_config: version={version!r}: treadle-fsdp runs FSDP2 (fully_shard) only; drop the key or set it to 2"
        )
    for key in ("xla", "xla_fsdp_settings", "xla_fsdp_grad_ckpt"):
        if config.get(key):
            problems.append(f"fsdp_config: {key} asks for PyTorch/XLA's FSDP, which treadle-fsdp does not provide; remove it")
    if config.get("use_orig_params") is False:
        problems.append(
            "fsdp_config: use_orig_params=false cannot be honoured: FSDP2 has no flat parameters, every parameter "
            "stays its own (sharded) tensor; remove the key"
        )
    if config.get("limit_all_gathers") is False:
        problems.append(
            "fsdp_config: limit_all_gathers=false cannot be honoured: FSDP2 always bounds the all-gathers in "
            "flight (it has no rate-limiter switch); remove the key"
        )
    prefetch = config.get("backward_prefetch")
    if prefetch is not None and str(prefetch).strip().lower() != "backward_pre":
        problems.append(
            f"fsdp_config: backward_prefetch={prefetch!r} cannot be honoured: FSDP2 prefetches the next "
            "all-gather before each backward ('backward_pre') and has no other mode; use 'backward_pre' or remove the key"
        )


def _wrapping(words: list[str], config: dict[str, Any], result: FsdpSettings, problems: list[str]) -> None:
    """Which submodules become their own FSDP unit (the root always is one)."""
    layers = config.get("transformer_layer_cls_to_wrap")
    if isinstance(layers, str):
        layers = [part for part in layers.replace(",", " ").split() if part]
    if layers is not None and not (isinstance(layers, list) and all(isinstance(x, str) for x in layers)):
        problems.append(f"fsdp_config: transformer_layer_cls_to_wrap must be class names, got {layers!r}")
        layers = None
    min_params = config.get("min_num_params", 0) or 0
    if not isinstance(min_params, int) or isinstance(min_params, bool) or min_params < 0:
        problems.append(f"fsdp_config: min_num_params must be a whole number >= 0, got {min_params!r}")
        min_params = 0
    policy = config.get("auto_wrap_policy")
    if policy is not None:
        policy = _WRAP_POLICIES.get(str(policy).strip().lower())
        if policy is None:
            problems.append(
                f"fsdp_config: auto_wrap_policy={config['auto_wrap_policy']!r}; use TRANSFORMER_BASED_WRAP, SIZE_BASED_WRAP or NO_WRAP"
            )
    if layers and min_params:
        problems.append("fsdp_config: give transformer_layer_cls_to_wrap or min_num_params, not both")
    elif layers:
        result.wrap, result.layer_classes = "transformer", list(layers)
    elif min_params:
        result.wrap, result.min_num_params = "size", int(min_params)
    elif policy == "transformer" or "auto_wrap" in words:
        result.wrap = "auto"
    if policy == "size" and not min_params:
        problems.append("fsdp_config: auto_wrap_policy=SIZE_BASED_WRAP needs min_num_params")
    if policy == "none":
        result.wrap = "none"


def _flag(config: dict[str, Any], key: str, default: bool, problems: list[str]) -> bool:
    value = config.get(key, default)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if not isinstance(value, bool):
        problems.append(f"fsdp_config: {key} must be true or false, got {value!r}")
        return default
    return value


def _behaviour(config: dict[str, Any], result: FsdpSettings, problems: list[str]) -> None:
    result.forward_prefetch = _flag(config, "forward_prefetch", False, problems)
    result.activation_checkpointing = _flag(config, "activation_checkpointing", False, problems)
    result.sync_module_states = _flag(config, "sync_module_states", True, problems)
    result.meta_init = _flag(config, "cpu_ram_efficient_loading", False, problems)
    if (result.activation_checkpointing or result.forward_prefetch) and result.wrap == "none":
        which = "activation_checkpointing" if result.activation_checkpointing else "forward_prefetch"
        problems.append(
            f"fsdp_config: {which} works per wrapped layer, but nothing is wrapped; add 'auto_wrap' to --fsdp or set "
            "transformer_layer_cls_to_wrap / min_num_params"
        )
    if "reshard_after_forward" in config:
        value = config["reshard_after_forward"]
        if isinstance(value, bool) or (isinstance(value, int) and value > 1):
            result.reshard_after_forward = value
        else:
            problems.append(
                f"fsdp_config: reshard_after_forward must be true, false, or a group size > 1, got {value!r}"
            )
    kind = config.get("state_dict_type")
    if kind is not None:
        named = _STATE_DICT_TYPES.get(str(kind).strip().lower())
        if named is None:
            problems.append(f"fsdp_config: state_dict_type={kind!r}; use SHARDED_STATE_DICT or FULL_STATE_DICT")
        else:
            result.state_dict_type = named
