"""``--resume_from_checkpoint hub:ORG/NAME``: download a checkpoint folder of a hub repository.

``hub_strategy=checkpoint`` keeps the newest checkpoint in ``last-checkpoint/``; that is the
folder fetched by default (``hub:ORG/NAME/checkpoint-500`` names another one, ``@REVISION`` a
branch, tag or commit). Files go to the local Hugging Face cache (``HF_HOME``), so a second
resume of the same commit downloads nothing; the core then verifies the checkpoint's manifest
(sizes and sha256 of every file) as it does for a local one, so a partial download cannot
resume. Every process calls this; the cache's file locks let them share one download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from treadle.errors import CheckpointError

from treadle_hub import settings


def fetch_checkpoint(location: str, args: Any = None) -> str:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    token = (getattr(args, "hub_token", None) or None) if args is not None else None
    try:
        where = settings.parse_location(location)
    except ValueError as exc:
        raise CheckpointError(f"resume_from_checkpoint={location}: {exc}") from None
    revision = where.revision or (getattr(args, "hub_revision", None) if args is not None else None)
    endpoint = settings.endpoint()
    try:
        repo_id = where.repo_id
        if "/" not in repo_id:  # a bare name: the token's user's repository
            repo_id = f"{HfApi(endpoint=endpoint, token=token).whoami()['name']}/{repo_id}"
        root = snapshot_download(
            repo_id, revision=revision, allow_patterns=[f"{where.subfolder}/*"], token=token, endpoint=endpoint,
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        detail = settings.mask(f"{type(exc).__name__}: {exc}".splitlines()[0], token)
        raise CheckpointError(f"resume_from_checkpoint={location}: cannot download it from the hub ({detail})") from None
    folder = Path(root) / where.subfolder
    if not folder.is_dir():
        raise CheckpointError(
            f"resume_from_checkpoint={location}: {repo_id} has no {where.subfolder}/ folder"
            + (" (push with --hub_strategy checkpoint to keep the newest checkpoint there)"
               if where.subfolder == settings.LAST_CHECKPOINT else "")
        )
    return str(folder)
