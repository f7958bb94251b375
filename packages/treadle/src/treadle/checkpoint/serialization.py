"""Storing nested training state as JSON plus safetensors, so nothing is ever pickled.

An optimizer, scheduler or RNG state is a tree of dicts, lists and tuples whose leaves are
tensors, numpy arrays and plain numbers. ``split_tensors`` walks such a tree and returns two
things: a JSON-ready tree in which every tensor is replaced by a reference, and a flat
``{key: tensor}`` dict for a safetensors file. ``join_tensors`` rebuilds the original tree
exactly: ints stay ints, tuples stay tuples, integer dict keys stay integers, tensor dtypes and
bits are kept, and non-finite floats survive (strict JSON has no NaN).

The encoding tags what plain JSON cannot express with one-key objects whose key starts with
``__`` (``{"__tuple__": [...]}``); a real dict that would look like a tag is stored in the
explicit ``{"__dict__": [[key, value], ...]}`` form, so decoding is never ambiguous.

A type the encoding does not know (a function, an arbitrary object) is an error naming where in
the tree it sits: silently dropping it would make a resume inexact, and pickling it is what
this module exists to avoid.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from treadle.errors import CheckpointError

if TYPE_CHECKING:
    import torch

_TAGS = ("__tensor__", "__tuple__", "__dict__", "__float__", "__ndarray__", "__dtype__")


class UnsupportedStateError(CheckpointError, TypeError):
    """A value in a state tree has no pickle-free representation."""


def split_tensors(tree: Any, where: str = "state") -> tuple[Any, dict[str, torch.Tensor]]:
    """Return ``(json_tree, tensors)``; tensor keys are the dotted paths (``state.3.exp_avg``).

    Tensors are moved to the CPU; tensors that share memory are copied so safetensors can
    store them. ``where`` names the tree in error messages.
    """
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, [], tensors, where)
    return encoded, unshare_tensors(tensors)


def join_tensors(encoded: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of ``split_tensors``."""
    return _decode(encoded, tensors)


# -- encoding ----------------------------------------------------------------------------------


def _encode(value: Any, path: list[str], tensors: dict[str, Any], where: str) -> Any:
    import numpy as np
    import torch

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.Tensor):
        key = _unique_key(".".join(path) or "value", tensors)
        tensors[key] = value.detach().to("cpu")
        return {"__tensor__": key}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": {"dtype": value.dtype.str, "shape": list(value.shape), "data": value.ravel().tolist()}}
    if isinstance(value, np.generic):
        return _encode(value.item(), path, tensors, where)
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, path + [str(i)], tensors, where) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, path + [str(i)], tensors, where) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        items = [(k, _encode(v, path + [str(k)], tensors, where)) for k, v in value.items()]
        plain = all(isinstance(k, str) and not k.startswith("__") for k, _ in items)
        if plain:
            return dict(items)
        return {"__dict__": [[_encode_key(k, path, where), v] for k, v in items]}
    location = ".".join([where, *path])
    raise UnsupportedStateError(
        f"{location} is a {type(value).__name__}, which treadle cannot store without pickle; "
        "make the state_dict hold only tensors, numbers, strings, lists and dicts"
    )


def _encode_key(key: Any, path: list[str], where: str) -> Any:
    if isinstance(key, (str, int, float, bool)) or key is None:
        return key
    if isinstance(key, tuple) and all(isinstance(k, (str, int)) for k in key):
        return {"__tuple__": list(key)}
    location = ".".join([where, *path])
    raise UnsupportedStateError(f"{location} has a dict key of type {type(key).__name__}, which JSON cannot hold")


def _unique_key(key: str, taken: Mapping[str, Any]) -> str:
    if key not in taken:
        return key
    n = 1
    while f"{key}#{n}" in taken:
        n += 1
    return f"{key}#{n}"


def unshare_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy tensors that overlap another one in memory (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out = {}
    for key, t in tensors.items():
        if t.device.type == "meta":
            raise UnsupportedStateError(f"{key} is a meta tensor (no data); it cannot be checkpointed")
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        shared = ptr is not None and ptr in seen
        if shared or not t.is_contiguous():
            t = t.contiguous() if not shared else t.clone().contiguous()
        if ptr is not None:
            seen.add(ptr)
        out[key] = t
    return out


# -- decoding ----------------------------------------------------------------------------------


def _decode(value: Any, tensors: Mapping[str, Any]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, body), = value.items()
        if tag in _TAGS:
            return _decode_tagged(tag, body, tensors)
    return {k: _decode(v, tensors) for k, v in value.items()}


def _decode_tagged(tag: str, body: Any, tensors: Mapping[str, Any]) -> Any:
    import numpy as np
    import torch

    if tag == "__tensor__":
        return tensors[body]
    if tag == "__tuple__":
        return tuple(_decode(v, tensors) for v in body)
    if tag == "__dict__":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in body}
    if tag == "__float__":
        return float(body)
    if tag == "__dtype__":
        return getattr(torch, body)
    # __ndarray__
    return np.asarray(body["data"], dtype=np.dtype(body["dtype"])).reshape(body["shape"])


# -- files -------------------------------------------------------------------------------------


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it, so a crash after return cannot lose it."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory fsync makes renames in it durable).

    Where directories cannot be fsynced (Windows, some network filesystems) that part is
    skipped: those systems order metadata updates themselves or offer nothing better.
    """
    is_dir = os.path.isdir(path)
    if is_dir and os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (is_dir and exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def dump_json(obj: Any) -> bytes:
    """JSON bytes for a state file; strict (no NaN) so any JSON reader can open it."""
    return (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode("utf-8")


def save_state_files(directory: Path, stem: str, tree: Any, *, where: str, metadata: dict[str, str] | None = None) -> list[str]:
    """Write ``<stem>.json`` and, when the tree holds tensors, ``<stem>.safetensors``.

    Returns the names of the files written. They are not fsynced: the caller makes the whole
    directory durable at once (see ``treadle.checkpoint``).
    """
    from safetensors.torch import save_file

    encoded, tensors = split_tensors(tree, where)
    written = []
    if tensors:
        save_file(tensors, str(directory / f"{stem}.safetensors"), metadata=metadata)
        written.append(f"{stem}.safetensors")
    (directory / f"{stem}.json").write_bytes(dump_json({"tree": encoded}))
    written.append(f"{stem}.json")
    return written


def load_state_files(directory: Path, stem: str, open_file: Callable[[str], Path] | None = None) -> Any:
    """Read what ``save_state_files`` wrote. ``open_file`` may check a name before it is read."""
    from safetensors.torch import load_file

    check = open_file or (lambda name: directory / name)
    with unreadable_file_is_checkpoint_error(directory / f"{stem}.json"):
        tree = json.loads(check(f"{stem}.json").read_text("utf-8"))["tree"]
    tensors: dict[str, Any] = {}
    if (directory / f"{stem}.safetensors").exists() or _references_tensors(tree):
        with unreadable_file_is_checkpoint_error(directory / f"{stem}.safetensors"):
            tensors = load_file(str(check(f"{stem}.safetensors")))
    return join_tensors(tree, tensors)


@contextlib.contextmanager
def unreadable_file_is_checkpoint_error(path: Path) -> Iterator[None]:
    """A file that matches its manifest but cannot be parsed (written garbage, another tool's format)
    is a ``CheckpointError`` naming it, not a traceback from safetensors or json."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, ValueError, KeyError, TypeError, OSError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); its contents are not what treadle wrote "
            "there, so it cannot be loaded: use another checkpoint (or save the model again)"
        ) from None


def _references_tensors(tree: Any) -> bool:
    if isinstance(tree, dict):
        return "__tensor__" in tree or any(_references_tensors(v) for v in tree.values())
    if isinstance(tree, list):
        return any(_references_tensors(v) for v in tree)
    return False
