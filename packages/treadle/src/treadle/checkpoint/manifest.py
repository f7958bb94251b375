"""Integrity of a checkpoint directory: a manifest of every file's size and sha256.

Entries are paths relative to the checkpoint directory (``/``-separated), so a strategy's own
subdirectories (sharded state written with torch.distributed.checkpoint) are covered too.
The manifest is the last file a save writes (after every other file is fsynced), so its presence
means the save finished, and its checksums catch a file that was truncated, altered or deleted
since. ``verify_checkpoint`` is what every load goes through.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Union

from treadle.__about__ import __version__
from treadle.checkpoint.serialization import dump_json, fsync_path, write_bytes_durably
from treadle.errors import CheckpointError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "treadle-checkpoint"
MANIFEST_VERSION = 1

_HASH_CHUNK = 1 << 20


def write_manifest(directory: Path, **facts: Any) -> None:
    """Hash and fsync every file in ``directory``, then write the manifest and fsync the dir.

    ``facts`` (step, kind, world size, ...) are recorded next to the file list.
    """
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    digests = _map_files(lambda path: _sha256(path, fsync=True), paths)
    files = {
        path.relative_to(directory).as_posix(): {"size": path.stat().st_size, "sha256": digest}
        for path, digest in zip(paths, digests)
    }
    for sub in sorted({p.parent for p in paths if p.parent != directory}, reverse=True):
        fsync_path(sub)  # a strategy's own subdirectories (sharded state) are durable too
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "treadle_version": __version__, **facts, "files": files}
    write_bytes_durably(directory / MANIFEST_NAME, dump_json(manifest))
    fsync_path(directory)


def verify_checkpoint(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Check a checkpoint against its manifest; return the manifest or raise ``CheckpointError``.

    The verdict is cached for files whose size and modification time have not changed, so
    resolving and then loading a checkpoint hashes it only once.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    manifest = _read_manifest(directory)
    signature = _signature(directory, manifest)
    if _verified.get(str(directory.resolve())) == signature:
        return manifest
    _map_files(lambda item: _check_file(directory, *item), list(manifest["files"].items()))
    _verified[str(directory.resolve())] = signature
    return manifest


_verified: dict[str, tuple] = {}


def verify_files(path: Union[str, os.PathLike], names: list[str]) -> dict[str, Any]:
    """Check only ``names`` against the manifest (evaluation needs the weights, not the optimizer state)."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    manifest = _read_manifest(directory)
    for name in names:
        manifest_file(directory, manifest, name)  # listed, or a CheckpointError naming it
        _check_file(directory, name, manifest["files"][name])
    return manifest


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: {directory} is not a complete treadle checkpoint (its save was interrupted, "
            "or another tool wrote it). Resume from another checkpoint (--resume_from_checkpoint true picks the "
            "newest complete one)."
        )
    try:
        manifest = json.loads(path.read_text("utf-8"))
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError("not a treadle checkpoint manifest")
        version = manifest.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MANIFEST_VERSION:
            raise CheckpointError(
                f"{path} has manifest version {version!r}, which this treadle {__version__} does not know (it reads "
                f"versions 1 to {MANIFEST_VERSION}); a newer treadle wrote it, or the manifest is damaged: "
                "upgrade treadle, or resume from another checkpoint"
            )
        for name, entry in files.items():
            if not _safe_relative(name) or not {"size", "sha256"} <= set(entry):
                raise ValueError(f"bad file entry {name!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path} is unreadable or damaged ({exc}); this checkpoint cannot be trusted, resume from another one"
        ) from None
    return manifest


def _safe_relative(name: Any) -> bool:
    """A manifest entry names a file inside the checkpoint: relative, ``/``-separated, no ``..``."""
    if not isinstance(name, str) or not name or "\\" in name or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _check_file(directory: Path, name: str, entry: Mapping[str, Any]) -> None:
    path = directory / name
    advice = "the checkpoint is damaged; resume from another one (--resume_from_checkpoint true skips damaged ones)"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (the manifest lists it); {advice}")
    size = path.stat().st_size
    if size != entry["size"]:
        raise CheckpointError(f"{path} has {size} bytes but the manifest says {entry['size']} (truncated?); {advice}")
    if _sha256(path) != entry["sha256"]:
        raise CheckpointError(f"{path} does not match its sha256 in the manifest (corrupted or modified); {advice}")


def _signature(directory: Path, manifest: Mapping[str, Any]) -> tuple:
    stats = []
    for name in [MANIFEST_NAME, *manifest["files"]]:
        try:
            st = (directory / name).stat()
            stats.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            stats.append((name, None))
    return tuple(stats)


def _sha256(path: Path, *, fsync: bool = False) -> str:
    """The file's sha256; with ``fsync``, also force its data to disk."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
        if fsync:
            os.fsync(fh.fileno())
    return digest.hexdigest()


def _map_files(work: Any, paths: list[Any]) -> list[Any]:
    """``[work(p) for p in paths]`` on a few threads (hashing and fsync release the GIL), in order."""
    if len(paths) < 2:
        return [work(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1, len(paths))) as pool:
        return list(pool.map(work, paths))


def manifest_file(directory: Path, manifest: Mapping[str, Any], name: str) -> Path:
    """A file the load needs: it must be listed (hence verified) in the manifest."""
    if name not in manifest["files"]:
        raise CheckpointError(f"{directory / name} is not in the checkpoint's manifest; the checkpoint is incomplete")
    return directory / name
