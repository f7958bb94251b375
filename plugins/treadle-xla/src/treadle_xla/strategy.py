"""Strategies for XLA: ``xla`` (data parallel over PJRT replicas) and ``xla_fsdp`` (torch_xla's FSDP).

PJRT counts the replicas: ``torch_xla.launch`` (``python -m treadle_xla.launch``) starts one
process per TPU chip, or on PJRT's CPU client one thread per device (``CPU_NUM_DEVICES``) in
one process; each replica runs its own Trainer. The replicas' weights start from replica 0's
(a broadcast at setup), the data is split by ``shard_info`` (PJRT's count and ordinal), and
every collective goes through ``treadle_xla.graph`` (why: see there). ``xla`` keeps a full model per replica and reduces
the gradients across replicas before they are clipped or stepped (what ``xm.optimizer_step``
does, split so that clipping sees the reduced gradients). With one replica the reduction is
skipped and the strategy is the single-device one on an XLA device.

``xla_fsdp`` wraps the model in ``XlaFullyShardedDataParallel`` with the options of
``fsdp_config["xla_fsdp_settings"]``; the parameters are sharded and the gradients
reduce-scattered by the wrapper, so the optimizer steps directly.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, Optional

import torch
from treadle.components import Strategy
from treadle.errors import UsageError

from treadle_xla.graph import collective, cut, isolates_collectives

logger = logging.getLogger("treadle.xla")

_REDUCE = {"sum": "sum", "mean": "sum", "max": "max", "min": "min"}


class XlaStrategy(Strategy):
    """One XLA device per process; gradients all-reduced across the PJRT replicas."""

    name = "xla"

    def __init__(self, args: Any, backend: Any, precision: Any) -> None:
        super().__init__(args, backend, precision)
        self._reduced = False

    # topology (PJRT's view of the replicas) --------------------------------------------------------
    @property
    def world_size(self) -> int:
        import torch_xla.runtime as xr

        return xr.world_size()

    @property
    def global_rank(self) -> int:
        import torch_xla.runtime as xr

        return xr.global_ordinal()

    @property
    def local_rank(self) -> int:
        import torch_xla.runtime as xr

        return xr.local_ordinal()

    def setup_environment(self) -> None:
        check_launcher(self.world_size)
        super().setup_environment()

    # model and steps ---------------------------------------------------------------------------------
    def setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.root_device)
        if self.world_size > 1:
            self.broadcast_weights(model)
        return model

    def broadcast_weights(self, model: torch.nn.Module) -> None:
        """Give every replica replica 0's parameters and buffers.

        Replicas that are threads of one process share torch's CPU generator, so the model each
        one built is not the seeded one (and not the others'): without this they would train
        apart. Each replica contributes its weights times a 1 (replica 0) or 0 (the others)
        held as device data, not as a constant, so every replica compiles the same graph.
        """
        import torch_xla.core.xla_model as xm

        mask = torch.tensor([1.0 if self.global_rank == 0 else 0.0]).to(self.root_device)
        tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
        with torch.no_grad():
            masked = [t * mask.to(t.dtype) for t in tensors]
            summed = collective(lambda: [xm.all_reduce("sum", t) for t in masked])  # out of place: see graph
            for tensor, value in zip(tensors, summed, strict=True):
                tensor.copy_(value)
        cut()

    def _reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._reduced and self.world_size > 1:
            import torch_xla.core.xla_model as xm

            if isolates_collectives():  # out of place, the gradients kept until it has run (see graph)
                grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
                scale = 1.0 / self.world_size
                reduced = collective(lambda: [xm.all_reduce("sum", g, scale=scale) for g in grads])
                with torch.no_grad():
                    for grad, value in zip(grads, reduced, strict=True):
                        grad.copy_(value)
            else:  # cut right away, so that host reads of a norm compile no collective
                collective(lambda: xm.reduce_gradients(optimizer))
        self._reduced = True

    def clip_grad_norm(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
        self._reduce_gradients(optimizer)  # clip the replicas' mean gradient, not each replica's own
        return super().clip_grad_norm(model, optimizer, max_norm)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> bool:
        self._reduce_gradients(optimizer)
        self._reduced = False
        return self.precision.optimizer_step(optimizer)

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        self._reduced = False
        optimizer.zero_grad(set_to_none=True)

    # collectives ----------------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        world = self.world_size
        if world == 1:
            return tensor
        import torch_xla.core.xla_model as xm

        if op not in _REDUCE:
            raise UsageError(f"xla all_reduce: unknown op {op!r} (sum, mean, max, min)")
        scale = 1.0 / world if op == "mean" else 1.0
        return collective(lambda: xm.all_reduce(_REDUCE[op], tensor, scale=scale))

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        import torch_xla.core.xla_model as xm

        # pin_layout=False: the pinned variant pads by the replica's ordinal, a different graph on each
        return collective(lambda: xm.all_gather(tensor, dim=0, pin_layout=not isolates_collectives()))

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        sizes = self.all_gather(torch.tensor([payload.numel()], device=self.root_device)).cpu().tolist()
        padded = torch.zeros(max(sizes), dtype=torch.uint8)
        padded[: payload.numel()] = payload
        gathered = self.all_gather(padded.to(self.root_device)).cpu().reshape(len(sizes), -1)
        return [pickle.loads(gathered[i, :size].numpy().tobytes()) for i, size in enumerate(sizes)]

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj if self.world_size == 1 else self.all_gather_object(obj)[src]

    def barrier(self, name: str = "") -> None:
        # an all-reduce the host waits for (xm.rendezvous would compile outside the lock)
        if self.world_size > 1:
            self.all_reduce(torch.ones(1, device=self.root_device), op="sum").cpu()

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        if self.world_size == 1:
            return bool(decision)
        flag = torch.tensor([int(bool(decision))], dtype=torch.int32).to(self.root_device)
        return bool(self.all_reduce(flag, op="min" if all else "max").item())

    # checkpoint state: XLA tensors come back to the host in one sync ------------------------------
    def model_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return _to_cpu(super().model_state_dict(model))

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return _to_cpu(super().optimizer_state_dict(optimizer))


class XlaFsdpStrategy(XlaStrategy):
    """torch_xla's ``XlaFullyShardedDataParallel`` with the ``fsdp_config`` XLA options.

    Checkpoints hold each replica's shard (``xla_fsdp/model-rank<r>.safetensors``, its optimizer
    state next to it, the shard layout in ``shard_metadata.json``) so a resume on the same number
    of replicas reads only its own; the writer adds the consolidated ``model.safetensors`` under
    the user's parameter names, which ``save_model`` and evaluation from a checkpoint read.
    """

    name = "xla_fsdp"

    def setup_environment(self) -> None:
        check_fsdp_replicas(self.world_size)
        super().setup_environment()

    def wrap_options(self, model: torch.nn.Module) -> dict[str, Any]:
        """Keyword arguments for ``XlaFullyShardedDataParallel`` from ``fsdp_config``."""
        import functools

        from torch_xla.distributed.fsdp.wrap import size_based_auto_wrap_policy, transformer_auto_wrap_policy

        config = dict(self.args.load_json_field("fsdp_config") or {}) if self.args.fsdp_config else {}
        options = dict(config.get("xla_fsdp_settings") or {})
        min_params = int(config.get("min_num_params") or 0)
        layer_names = config.get("transformer_layer_cls_to_wrap") or []
        layer_names = {layer_names} if isinstance(layer_names, str) else set(layer_names)
        if min_params and layer_names:
            raise UsageError("fsdp_config: set min_num_params or transformer_layer_cls_to_wrap, not both")
        if min_params:
            options["auto_wrap_policy"] = functools.partial(size_based_auto_wrap_policy, min_num_params=min_params)
        elif layer_names:
            classes = {type(m) for m in model.modules() if type(m).__name__ in layer_names}
            missing = layer_names - {cls.__name__ for cls in classes}
            if missing:
                raise UsageError(
                    f"fsdp_config: transformer_layer_cls_to_wrap names {', '.join(sorted(missing))}, "
                    f"which {type(model).__name__} does not contain"
                )
            options["auto_wrap_policy"] = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=classes)
        if config.get("xla_fsdp_grad_ckpt"):
            if "auto_wrap_policy" not in options:
                raise UsageError(
                    "fsdp_config: xla_fsdp_grad_ckpt checkpoints each nested FSDP unit, so it needs an auto-wrap "
                    "policy: set min_num_params or transformer_layer_cls_to_wrap"
                )
            from torch_xla.distributed.fsdp import checkpoint_module

            options["auto_wrapper_callable"] = lambda module, *a, **k: _fsdp_class()(checkpoint_module(module), *a, **k)
        return options

    def setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        options = self.wrap_options(model)
        self._user_model = model
        self._wrapped = _fsdp_class()(model.to(self.root_device), **options)
        return self._wrapped

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return getattr(self, "_user_model", model)

    def setup(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> tuple[torch.nn.Module, Any, Any]:
        """Point the optimizer at the wrapper's shards.

        The loop builds the optimizer from the user's module, whose parameters the wrapper has
        replaced by its (flattened) shards; the optimizer is kept, with its parameter groups
        and schedule, and given the shards instead. Flattening mixes biases and weights, so all
        of them get the first group's options (its weight decay too, as with any flat FSDP).
        """
        if optimizer is not None:
            rebind_parameters(optimizer, [p for p in model.parameters() if p.requires_grad])
        return super().setup(model, optimizer, scheduler)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> bool:
        # the wrapper reduce-scatters the gradients itself: each replica steps its own shard
        return self.precision.optimizer_step(optimizer)

    def clip_grad_norm(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
        self.precision.unscale_gradients(optimizer)
        return self._wrapped.clip_grad_norm_(max_norm)  # the global norm over every shard

    def grad_norm(self, model: torch.nn.Module) -> Optional[torch.Tensor]:
        local = super().grad_norm(model)
        if local is None or self.world_size == 1:
            return local
        return self.all_reduce(local.pow(2), op="sum").sqrt()

    def model_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full weights under the user's names, consolidated from every replica's shard."""
        from torch_xla.distributed.fsdp import consolidate_sharded_state_dicts

        shards = self.all_gather_object({"model": _to_cpu(self._wrapped.state_dict()),
                                         "shard_metadata": self._wrapped.get_shard_metadata()})
        return dict(consolidate_sharded_state_dicts([s["model"] for s in shards], shards[0]["shard_metadata"]))

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return _to_cpu(optimizer.state_dict())  # this replica's shard of it

    def _shard_name(self, what: str) -> str:
        return f"xla_fsdp/{what}-rank{self.global_rank:05d}-of-{self.world_size:05d}"

    def save_checkpoint(self, staging_dir: Any, model: torch.nn.Module, optimizer: Any, *, writer: bool) -> None:
        from pathlib import Path

        from treadle.checkpoint.model_files import WEIGHTS_NAME, write_weights
        from treadle.checkpoint.serialization import dump_json, save_state_files, write_bytes_durably

        staging = Path(staging_dir)
        (staging / "xla_fsdp").mkdir(exist_ok=True)
        write_weights(staging / f"{self._shard_name('model')}.safetensors", _to_cpu(self._wrapped.state_dict()))
        if optimizer is not None:
            save_state_files(staging, self._shard_name("optimizer"), self.optimizer_state_dict(optimizer), where="optimizer")
        full = self.model_state_dict(model)  # collective: every replica takes part
        if writer:
            write_weights(staging / WEIGHTS_NAME, full)
            layout = {"world_size": self.world_size, "shard_metadata": self._wrapped.get_shard_metadata()}
            write_bytes_durably(staging / "xla_fsdp" / "shard_metadata.json", dump_json(_jsonable(layout)))
        return None

    def load_checkpoint(self, checkpoint_dir: Any, model: torch.nn.Module, optimizer: Any, manifest: dict[str, Any]) -> None:
        from pathlib import Path

        from treadle.checkpoint import checkpoint_file
        from treadle.checkpoint.model_files import read_weights
        from treadle.checkpoint.serialization import load_state_files
        from treadle.errors import CheckpointError

        directory = Path(checkpoint_dir)
        name = f"{self._shard_name('model')}.safetensors"
        if name not in manifest["files"]:
            raise CheckpointError(
                f"{directory} holds no XLA FSDP shard for replica {self.global_rank} of {self.world_size} "
                "(it was saved by another number of replicas, or by another strategy)"
            )
        shard = read_weights(checkpoint_file(directory, manifest, name))
        self._wrapped.load_state_dict({k: v.to(self.root_device) for k, v in shard.items()})
        if optimizer is not None:
            state = load_state_files(directory, self._shard_name("optimizer"), lambda n: checkpoint_file(directory, manifest, n))
            optimizer.load_state_dict(state)


def check_launcher(replicas: int) -> None:
    """Refuse processes a torchrun-style launcher started that PJRT does not count as replicas.

    Under ``treadle train --nproc_per_node N`` (torchrun) on PJRT's CPU client, each process
    is a client of its own with one replica: the N processes would each train alone, on the
    same data, and write the same checkpoints.
    """
    import os

    launched = os.environ.get("WORLD_SIZE", "1")
    if launched.isdigit() and int(launched) > 1 and int(launched) != replicas:
        raise UsageError(
            f"strategy 'xla': a launcher started {launched} processes (WORLD_SIZE={launched}), but PJRT counts "
            f"{replicas} replica(s) in this one, so they would not train together. Start XLA replicas with "
            "torch_xla's launcher: python -m treadle_xla.launch train ... (on PJRT's CPU client, "
            "CPU_NUM_DEVICES=N gives N replicas)"
        )


def check_fsdp_replicas(replicas: int) -> None:
    """Refuse ``xla_fsdp`` over several replicas of PJRT's CPU client.

    torch_xla's FSDP all-gathers and reduce-scatters inside the step's own graph, where
    ``treadle_xla.graph`` cannot give each collective a graph of its own; XLA:CPU's thread
    replicas then never pair them (the run hangs until XLA aborts it).
    """
    from treadle_xla.graph import isolates_collectives

    if replicas > 1 and isolates_collectives():
        raise UsageError(
            f"strategy 'xla_fsdp' over {replicas} replicas of PJRT's CPU client: torch_xla's FSDP runs its "
            "collectives inside the step's graph, which XLA:CPU's thread replicas cannot pair. Use strategy 'xla' "
            "(drop fsdp_config's \"xla\": true) for several CPU replicas, or one replica (CPU_NUM_DEVICES=1)"
        )


def rebind_parameters(optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter]) -> None:
    """Make ``optimizer`` step ``parameters``: all in its first group, the other groups emptied.

    The groups stay (a scheduler keeps one learning rate per group); no state exists yet.
    """
    groups = optimizer.param_groups
    decays = {group.get("weight_decay", 0.0) for group in groups if group["params"]}
    if len(decays) > 1:
        logger.warning(
            "xla_fsdp: flattened parameters share one weight decay (%s); biases and norm weights are decayed too",
            groups[0].get("weight_decay", 0.0),
        )
    groups[0]["params"] = list(parameters)
    for group in groups[1:]:
        group["params"] = []
    optimizer.state.clear()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _fsdp_class():
    from torch_xla.distributed.fsdp import XlaFullyShardedDataParallel

    return XlaFullyShardedDataParallel


def _to_cpu(value: Any) -> Any:
    """``value`` with every XLA tensor copied to the host, after one cut of pending work."""
    cut()
    return _move(value)


def _move(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu() if value.device.type == "xla" else value
    if isinstance(value, dict):
        return {k: _move(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_move(v) for v in value)
    return value
