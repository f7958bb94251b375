"""Sharded checkpoints with torch.distributed.checkpoint (DCP), inside treadle's staging directory.

Every process writes its own shard of the model and optimizer state into ``<staging>/fsdp/``
(``__<rank>_0.distcp``) and the coordinator writes DCP's ``.metadata``; the core then lists
every file in the checkpoint manifest (size, sha256) and renames the staging directory into
place, so a sharded checkpoint is as atomic as a single-process one.

Guarantees:

* same number of processes: resume is exact (on CPU, bitwise), since each process gets back
  exactly the shard it wrote;
* another number of processes: DCP reshards on load (each process reads the byte ranges of its
  new shard), so a checkpoint written by 2 processes resumes on 1 or 4; the weights and
  optimizer state are the same, but the data order and per-process random streams differ, so
  the continued run matches only within float tolerance.

Pickle: DCP stores its index (``.metadata``) with ``pickle`` and non-tensor values inside the
``.distcp`` files with ``torch.save``. These files are recorded as pickled in the manifest.
Loading them is the opt-in: resuming with ``--strategy fsdp`` from such a checkpoint unpickles
``.metadata``, after the core has checked every file against its sha256 in the manifest, so
only a checkpoint this plugin wrote (and nobody altered) is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

SHARD_DIR = "fsdp"
METADATA = ".metadata"


def save_sharded(directory: Path, model: torch.nn.Module, optimizer: Any) -> list[str]:
    """Write model (and optimizer) shards with DCP on every process; returns the files, relative to ``directory``."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    state = _state(model, optimizer)
    target = directory / SHARD_DIR
    dcp.save(state, checkpoint_id=str(target))
    if dist.is_initialized():
        dist.barrier()  # every shard is on disk before the coordinator lists them
    return sorted(f"{SHARD_DIR}/{path.name}" for path in target.iterdir() if path.is_file())


def has_shards(manifest: Mapping[str, Any]) -> bool:
    return f"{SHARD_DIR}/{METADATA}" in manifest.get("files", {})


def load_sharded(directory: Path, model: torch.nn.Module, optimizer: Any) -> None:
    """Read this process's (possibly resharded) part of a DCP checkpoint into model and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state(model, optimizer)
    dcp.load(state, checkpoint_id=str(directory / SHARD_DIR))
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state["model"])
        return
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def _state(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}
