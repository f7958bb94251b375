"""The run's hub repository: created on first use, one commit per upload.

Each upload is a single ``create_commit`` whose operations this module lists itself (rather than
``upload_folder``), so a checkpoint upload is exactly one commit holding the model at the root
and the checkpoint in its folder, and stale files of a replaced folder (``last-checkpoint/``)
are deleted in that same commit. Files that did not change are skipped by the client (the hub
reports their ids), so an unchanged upload makes no commit at all.

The repository name defaults to the output directory's name; without an ``org/`` part the hub
creates it under the token's user, and the id the hub answers with is the one used from then on.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Optional, Union

from treadle_hub import settings

Source = Union[Path, bytes]
"""A file to upload: a local path, or the bytes themselves (the generated model card)."""


class HubRepo:
    def __init__(self, args: Any) -> None:
        from huggingface_hub import HfApi
        from treadle.__about__ import __version__

        self.args = args
        self.token: Optional[str] = args.hub_token or None  # None: HF_TOKEN or the saved login
        self.api = HfApi(endpoint=settings.endpoint(), token=self.token, library_name="treadle", library_version=__version__)
        self.repo_id: Optional[str] = None
        self._branches: set[str] = set()
        self._lock = threading.Lock()  # the upload thread and init_repo on the training thread

    @property
    def requested_name(self) -> str:
        return self.args.hub_model_id or Path(os.path.abspath(self.args.output_dir)).name

    def ensure(self, revision: Optional[str], token: Optional[str] = None) -> str:
        """Create the repository (``exist_ok``) and the branch ``revision`` once; return the repo id."""
        with self._lock:
            if self.repo_id is None:
                url = self.api.create_repo(self.requested_name, private=self.args.hub_private_repo, exist_ok=True, token=token)
                self.repo_id = url.repo_id
            if revision and revision != "main" and revision not in self._branches:
                self.api.create_branch(self.repo_id, branch=revision, exist_ok=True, token=token)
                self._branches.add(revision)
            return self.repo_id

    def commit(
        self,
        files: dict[str, Source],
        *,
        message: str,
        replace_folders: tuple[str, ...] = (),
        description: Optional[str] = None,
        revision: Optional[str] = None,
        token: Optional[str] = None,
    ) -> str:
        """Commit ``files`` (repository path -> source); files under ``replace_folders`` that are
        not in ``files`` are deleted. Returns the commit's URL."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        repo_id = self.ensure(revision, token)
        operations: list[Any] = [
            CommitOperationDelete(path)
            for folder in replace_folders
            for path in self._remote_files(repo_id, folder, revision, token)
            if path not in files
        ]
        operations += [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(src) if isinstance(src, Path) else src)
            for path, src in files.items()
        ]
        info = self.api.create_commit(
            repo_id, operations, commit_message=message, commit_description=description, revision=revision, token=token
        )
        return str(info.commit_url)

    def _remote_files(self, repo_id: str, folder: str, revision: Optional[str], token: Optional[str]) -> list[str]:
        from huggingface_hub import RepoFile
        from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

        try:
            entries = self.api.list_repo_tree(repo_id, path_in_repo=folder, recursive=True, revision=revision, token=token)
            return [entry.path for entry in entries if isinstance(entry, RepoFile)]
        except (EntryNotFoundError, RevisionNotFoundError):
            return []  # nothing there yet


def folder_files(folder: Path, prefix: str = "", skip_top: tuple[str, ...] = ()) -> dict[str, Path]:
    """Every file under ``folder`` as ``{prefix + relative path: path}``.

    Hidden entries (``.incomplete-*`` staging directories, ``.git``) are left out at every level;
    top-level names matching one of ``skip_top`` (fnmatch patterns) too.
    """
    from fnmatch import fnmatch

    found: dict[str, Path] = {}
    for root, dirs, names in os.walk(folder):
        relative_root = Path(root).relative_to(folder)
        at_top = relative_root == Path(".")
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (at_top and any(fnmatch(d, p) for p in skip_top)))
        for name in sorted(names):
            if name.startswith(".") or (at_top and any(fnmatch(name, p) for p in skip_top)):
                continue
            path = Path(root) / name
            if path.is_file():
                found[prefix + (relative_root / name).as_posix()] = path
    return found
