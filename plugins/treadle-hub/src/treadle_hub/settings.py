"""What the plugin decides from the arguments and the environment alone (standard library only).

``hooks.py`` validates arguments with these at start-up, before ``huggingface_hub`` is imported,
so a run that could never upload (no token anywhere, offline mode) fails in a second instead of
after hours of training. The token itself is never returned from here, only where it comes from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

SCHEME = "hub"
"""``--resume_from_checkpoint hub:ORG/NAME`` names a checkpoint on the hub."""

LAST_CHECKPOINT = "last-checkpoint"
"""The repository folder ``hub_strategy=checkpoint`` keeps the newest checkpoint in."""

MASK = "***"


def endpoint() -> Optional[str]:
    """The hub to talk to: ``HF_ENDPOINT`` (a self-hosted hub), or None for huggingface.co."""
    value = os.environ.get("HF_ENDPOINT", "").strip()
    return value.rstrip("/") or None


def _token_file() -> Path:
    if os.environ.get("HF_TOKEN_PATH"):
        return Path(os.path.expanduser(os.environ["HF_TOKEN_PATH"]))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expanduser(home)) / "token"


def token_source(args: Any) -> Optional[str]:
    """Where the upload token comes from, in ``huggingface_hub``'s order, or None if nowhere."""
    if getattr(args, "hub_token", None):
        return "--hub_token"
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "HF_TOKEN"
    try:
        if _token_file().read_text(encoding="utf-8").strip():
            return "saved login"
    except OSError:
        pass
    return None


def offline() -> bool:
    return any(os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def mask(text: str, token: Optional[str]) -> str:
    """``text`` with every occurrence of ``token`` replaced (error messages may quote requests)."""
    return text.replace(token, MASK) if token else text


@dataclass(frozen=True)
class HubLocation:
    """``hub:ORG/NAME[/SUBFOLDER][@REVISION]``: a checkpoint folder of a hub repository."""

    repo_id: str
    subfolder: str = LAST_CHECKPOINT
    revision: Optional[str] = None


def parse_location(location: str) -> HubLocation:
    """Split ``hub:org/name/checkpoint-500@branch``; the folder defaults to ``last-checkpoint``.

    A bare ``hub:name`` has no namespace; the caller completes it with the token's user.
    """
    rest = location[len(SCHEME) + 1:] if location.startswith(f"{SCHEME}:") else location
    rest, _, revision = rest.partition("@")
    parts = [part for part in rest.strip().strip("/").split("/") if part]
    if not parts:
        raise ValueError(f"{location!r} names no repository; write hub:ORG/NAME")
    repo_id = "/".join(parts[:2])
    subfolder = "/".join(parts[2:]) or LAST_CHECKPOINT
    return HubLocation(repo_id, subfolder, revision.strip() or None)
