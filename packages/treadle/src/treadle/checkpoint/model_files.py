"""The files that describe a trained model: weights (safetensors), its config, the arguments.

Used both inside checkpoints and by ``Trainer.save_model``. Weights are always safetensors:
treadle never writes or reads pickle. Tied parameters (an embedding shared with the output
layer) appear twice in a state dict but are one tensor; they are stored once, and the other
names are recorded in the file's metadata (``treadle_tied``) so loading restores every name.
A Hugging Face model saved this way loads with ``from_pretrained`` (it re-ties weights itself).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from treadle.checkpoint.serialization import (
    UnsupportedStateError,
    fsync_path,
    unreadable_file_is_checkpoint_error,
    unshare_tensors,
)

if TYPE_CHECKING:
    import torch

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
TRAINING_ARGS_NAME = "training_args.json"
TIED_METADATA_KEY = "treadle_tied"


def write_weights(path: Path, state_dict: Mapping[str, Any]) -> None:
    """Write a model state dict to ``path`` as safetensors, tied tensors stored once."""
    from safetensors.torch import save_file

    tensors, tied = _dedupe_tied(state_dict)
    metadata = {"format": "pt"}
    if tied:
        metadata[TIED_METADATA_KEY] = json.dumps(tied, sort_keys=True)
    save_file(unshare_tensors(tensors), str(path), metadata=metadata)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read what ``write_weights`` wrote; tied names point at the same tensor again."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with unreadable_file_is_checkpoint_error(path):
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        state = load_file(str(path))
        for alias, canonical in json.loads(metadata.get(TIED_METADATA_KEY, "{}")).items():
            state[alias] = state[canonical]
    return state


def write_model_files(
    directory: Path, model: Any, state_dict: Optional[Mapping[str, Any]], args: Any, processing_class: Any = None
) -> list[str]:
    """Write weights, the model's config (when it has one) and ``training_args.json``.

    ``model`` is the unwrapped user model; ``state_dict`` its full weights (None: no weights
    file, the strategy's ``save_checkpoint`` writes them). Returns the file
    names written; making them durable (fsync) is the caller's business.
    """
    written = []
    if state_dict is not None:  # None: the strategy writes the weights itself (a checkpoint)
        write_weights(directory / WEIGHTS_NAME, state_dict)
        written.append(WEIGHTS_NAME)
    for name, text in _config_texts(model).items():
        (directory / name).write_text(text, encoding="utf-8")
        written.append(name)
    if args is not None and hasattr(args, "to_json_string"):
        (directory / TRAINING_ARGS_NAME).write_text(args.to_json_string(), encoding="utf-8")
        written.append(TRAINING_ARGS_NAME)
    written += write_processing_files(directory, processing_class)
    return written


def write_processing_files(directory: Path, processing_class: Any) -> list[str]:
    """The tokenizer / processor's own files (``save_pretrained``), so the folder loads whole with
    ``from_pretrained``; the names of the files it added."""
    save = getattr(processing_class, "save_pretrained", None)
    if save is None:
        return []
    before = {p for p in directory.rglob("*") if p.is_file()}
    save(str(directory))
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p not in before)


def replace_files_atomically(directory: Path, write: Any) -> list[str]:
    """Run ``write(staging_dir)`` then move each file it wrote into ``directory`` with a rename.

    Each final file is either the old one or the complete new one, never a truncated mix, even
    if the process dies in the middle (used for the final model in ``output_dir``).
    """
    import shutil
    import tempfile

    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incomplete-model-", dir=directory))
    try:
        names = write(staging)
        for name in names:
            fsync_path(staging / name)
        for name in names:
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, directory / name)
        fsync_path(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names


def _config_texts(model: Any) -> dict[str, str]:
    """The JSON files that describe the model's architecture (transformers-style configs)."""
    texts = {}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        texts[CONFIG_NAME] = config.to_json_string()
    elif isinstance(config, Mapping):
        texts[CONFIG_NAME] = json.dumps(dict(config), indent=2, sort_keys=True) + "\n"
    generation = getattr(model, "generation_config", None)
    can_generate = getattr(model, "can_generate", None)
    if generation is not None and hasattr(generation, "to_json_string") and callable(can_generate) and can_generate():
        texts[GENERATION_CONFIG_NAME] = generation.to_json_string()
    return texts


def _dedupe_tied(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a state dict into unique tensors and ``{alias: canonical name}`` for tied ones.

    Two names are tied when they are the very same view of the same memory (same storage,
    offset, shape, strides and dtype); the first name in the state dict is kept.
    """
    import torch

    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    owner: dict[tuple, str] = {}
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise UnsupportedStateError(
                f"model state entry {name!r} is a {type(value).__name__}, not a tensor; safetensors stores only tensors"
            )
        identity = _view_identity(value)
        if identity is not None and identity in owner:
            tied[name] = owner[identity]
            continue
        if identity is not None:
            owner[identity] = name
        tensors[name] = value.detach().to("cpu")
    return tensors, tied


def _view_identity(t: torch.Tensor) -> tuple | None:
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
