"""Read an offline ``run-<id>.wandb`` file back: config, history rows, artifacts and the exit code.

The file is LevelDB-log framing (32 KiB blocks, 7-byte record headers: crc, length, type; types
full / first / middle / last) around wandb's ``Record`` protobufs. wandb 0.31 no longer ships a
reader, so this one follows the format, and tests/plugins/requirements.txt pins the wandb version
it was checked against.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a wandb run file")
    pos, pending = 7, b""  # the file header: magic, version (2 bytes), ident (1 byte)
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        pos += _HEADER
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos:pos + length], pos + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


@dataclass
class RunFile:
    run_id: str = ""
    project: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    exit_code: Optional[int] = None
    resumed: bool = False


def read_run(path: Path, timeout: float = 60.0) -> RunFile:
    """The run file once its ``exit`` record is in: wandb's writer may still be flushing after ``finish()``."""
    deadline = time.monotonic() + timeout
    while True:
        run = _parse(path)
        if run.exit_code is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def _parse(path: Path) -> RunFile:
    out = RunFile()
    for payload in _payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.run_id, out.project, out.group = record.run.run_id, record.run.project, record.run.run_group
            out.name, out.tags = record.run.display_name, list(record.run.tags)
            out.resumed = out.resumed or bool(record.run.resumed)
            for item in record.run.config.update:
                out.config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out.config[item.key] = json.loads(item.value_json)
        elif kind == "history":
            out.history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "artifact":
            out.artifacts.append({"name": record.artifact.name, "type": record.artifact.type,
                                  "aliases": list(record.artifact.aliases),
                                  "files": sorted(entry.path for entry in record.artifact.manifest.contents)})
        elif kind == "exit":
            out.exit_code = record.exit.exit_code
    return out


def run_files(wandb_dir: Path) -> list[Path]:
    """Every offline run file under ``<wandb_dir>/wandb``, oldest first."""
    return sorted(Path(wandb_dir, "wandb").glob("offline-run-*/run-*.wandb"))
