"""A small Hub-compatible HTTP server for the treadle-hub tests (in memory, 127.0.0.1 only).

No installable package offers a local hub that accepts uploads, so the tests own this one. It
answers the routes ``huggingface_hub`` calls for what treadle-hub does -- who am I, create a repo
or a branch, preupload, commit (regular files, deletions), repo info, the file tree, file
downloads -- with the response shapes the client parses, and records every request so a test
can ask what reached the hub: which commits, with which files, in which order, with which
token. Every file is answered as a regular (non-LFS) upload unless ``lfs_from`` is set: then
files of that many bytes or more go through git-LFS's basic transfer (batch, PUT, verify), as
the client does with ``HF_HUB_DISABLE_XET=1`` (the Xet protocol is not spoken here).

A test can make commits fail (``fail_commits``: an HTTP status for the next N commits, or for
all of them) and make them slow (``commit_delay``), to exercise retries and background uploads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlparse

USER = "tester"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_id(data: bytes) -> str:
    """The git object id of a file (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: Optional[str]
    summary: str
    files: dict[str, bytes]
    added: list[str]
    deleted: list[str]
    revision: str


@dataclass
class Repo:
    repo_id: str
    private: Optional[bool]
    branches: dict[str, Optional[str]] = field(default_factory=lambda: {"main": None})
    commits: dict[str, Commit] = field(default_factory=dict)

    def files(self, revision: str) -> Optional[dict[str, bytes]]:
        oid = self.resolve(revision)
        if oid is False:
            return None
        return dict(self.commits[oid].files) if oid else {}

    def resolve(self, revision: str) -> Any:
        """The commit id a branch or commit id names; None for an empty branch; False if unknown."""
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else False


class FakeHub:
    """The server's state; ``url`` is the endpoint to give ``huggingface_hub``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.lfs_from: Optional[int] = None
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, as an LFS store keeps them
        self.fail_status: Optional[int] = None
        self.fail_remaining = 0
        self.commit_delay = 0.0
        self.concurrent_commits = 0
        self.max_concurrent_commits = 0
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.url = ""

    # -- control --------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def fail_commits(self, status: int = 500, times: Optional[int] = None) -> None:
        """Answer the next ``times`` commits (all of them when None) with ``status``."""
        with self.lock:
            self.fail_status = status
            self.fail_remaining = -1 if times is None else times

    def heal(self) -> None:
        with self.lock:
            self.fail_status, self.fail_remaining = None, 0

    # -- reading back -----------------------------------------------------------------------
    def repo(self, repo_id: str) -> Repo:
        return self.repos[repo_id]

    def history(self, repo_id: str, revision: str = "main") -> list[Commit]:
        """The commits of a branch, oldest first."""
        repo = self.repos[repo_id]
        oid, chain = repo.branches.get(revision), []
        while oid:
            chain.append(repo.commits[oid])
            oid = repo.commits[oid].parent
        return list(reversed(chain))

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].files(revision) or {}

    def attempts(self, kind: str) -> int:
        """How many requests of a kind (``commit``, ``preupload``, ``create``, ...) arrived."""
        return sum(1 for r in self.requests if r["kind"] == kind)

    def tokens_seen(self) -> set[str]:
        return {r["token"] for r in self.requests if r["token"]}

    # -- the routes -------------------------------------------------------------------------
    def create_repo(self, body: dict[str, Any]) -> tuple[int, Any]:
        name, organization = body.get("name"), body.get("organization") or USER
        repo_id = f"{organization}/{name}"
        with self.lock:
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            visibility = body.get("visibility")
            private = None if visibility is None else visibility == "private"
            self.repos[repo_id] = Repo(repo_id, private)
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def create_branch(self, repo_id: str, branch: str, body: dict[str, Any]) -> tuple[int, Any]:
        with self.lock:
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": "Repository not found"}
            if branch in repo.branches:
                return 409, {"error": f"Reference already exists: refs/heads/{branch}"}
            start = body.get("startingPoint") or "main"
            repo.branches[branch] = repo.resolve(start) or None
        return 200, {}

    def preupload(self, repo_id: str, revision: str, body: dict[str, Any]) -> tuple[int, Any]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}
        current = repo.files(revision) or {}
        answers = []
        for entry in body.get("files", []):
            existing = current.get(entry["path"])
            lfs = self.lfs_from is not None and entry["size"] >= self.lfs_from
            oid = None if existing is None else (_sha256(existing) if lfs else git_blob_id(existing))
            answers.append({"path": entry["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                            "oid": oid})
        return 200, {"files": answers}

    def commit(self, repo_id: str, revision: str, lines: list[dict[str, Any]]) -> tuple[int, Any]:
        with self.lock:
            self.concurrent_commits += 1
            self.max_concurrent_commits = max(self.max_concurrent_commits, self.concurrent_commits)
            failing = self.fail_status if self.fail_remaining != 0 else None
            if failing is not None and self.fail_remaining > 0:
                self.fail_remaining -= 1
        try:
            if self.commit_delay:
                time.sleep(self.commit_delay)
            if failing is not None:
                return failing, {"error": "the fake hub was told to fail this commit"}
            return self._apply_commit(repo_id, revision, lines)
        finally:
            with self.lock:
                self.concurrent_commits -= 1

    def _apply_commit(self, repo_id: str, revision: str, lines: list[dict[str, Any]]) -> tuple[int, Any]:
        with self.lock:
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": "Repository not found"}
            if revision not in repo.branches:
                return 404, {"error": f"Invalid rev id: {revision}"}
            parent = repo.branches[revision]
            files = repo.files(revision) or {}
            header, added, deleted = {}, [], []
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                    added.append(value["path"])
                elif key == "lfsFile":
                    if value["oid"] not in self.lfs_objects:
                        return 400, {"error": f"LFS object {value['oid']} was never uploaded"}
                    files[value["path"]] = self.lfs_objects[value["oid"]]
                    added.append(value["path"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                    deleted.append(value["path"])
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [p for p in files if p.startswith(prefix)]:
                        del files[path]
                    deleted.append(prefix)
                else:
                    return 400, {"error": f"the fake hub does not support {key!r} operations"}
            oid = hashlib.sha1(f"{parent}:{len(repo.commits)}:{header.get('summary')}".encode()).hexdigest()
            repo.commits[oid] = Commit(oid, parent, header.get("summary", ""), files, added, deleted, revision)
            repo.branches[revision] = oid
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def info(self, repo_id: str, revision: str) -> tuple[int, Any]:
        repo, files = self._snapshot(repo_id, revision)
        return 200, {"id": repo_id, "modelId": repo_id, "sha": repo.resolve(revision), "private": bool(repo.private),
                     "siblings": [{"rfilename": path} for path in sorted(files)]}

    def tree(self, repo_id: str, revision: str, path: str) -> tuple[int, Any]:
        _, files = self._snapshot(repo_id, revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries = [{"type": "file", "path": p, "size": len(data), "oid": git_blob_id(data), **self._lfs_info(data)}
                   for p, data in sorted(files.items()) if p.startswith(prefix)]
        return 200, entries

    def download(self, repo_id: str, revision: str, path: str) -> tuple[bytes, dict[str, str]]:
        repo, files = self._snapshot(repo_id, revision)
        if path not in files:
            raise Missing("EntryNotFound", f"{path} does not exist on {revision}")
        data = files[path]
        headers = {"ETag": f'"{git_blob_id(data)}"', "X-Repo-Commit": repo.resolve(revision) or ""}
        if self._lfs_info(data):
            headers.update({"X-Linked-Etag": f'"{_sha256(data)}"', "X-Linked-Size": str(len(data))})
        return data, headers

    # -- git-LFS basic transfer ---------------------------------------------------------------
    def lfs_batch(self, body: dict[str, Any]) -> tuple[int, Any]:
        objects = []
        for obj in body.get("objects", []):
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:
                answer["actions"] = {"upload": {"href": f"{self.url}/lfs-objects/{obj['oid']}"},
                                     "verify": {"href": f"{self.url}/lfs-verify/{obj['oid']}"}}
            objects.append(answer)
        return 200, {"transfer": "basic", "objects": objects}

    def lfs_put(self, oid: str, data: bytes) -> tuple[int, Any]:
        if _sha256(data) != oid:
            return 400, {"error": "content does not match its sha256"}
        with self.lock:
            self.lfs_objects[oid] = data
        return 200, {}

    def lfs_verify(self, oid: str) -> tuple[int, Any]:
        return (200, {}) if oid in self.lfs_objects else (404, {"error": f"no LFS object {oid}"})

    def _lfs_info(self, data: bytes) -> dict[str, Any]:
        oid = _sha256(data)
        return {"lfs": {"oid": oid, "size": len(data), "pointerSize": 134}} if oid in self.lfs_objects else {}

    def _snapshot(self, repo_id: str, revision: str) -> tuple[Repo, dict[str, bytes]]:
        """The repository and its files at ``revision``; ``Missing`` (a 404 the client understands) if none."""
        repo = self.repos.get(repo_id)
        if repo is None:
            raise Missing("RepoNotFound", "Repository not found")
        files = repo.files(revision)
        if files is None:
            raise Missing("RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, files


class Missing(Exception):
    """A 404 with the ``X-Error-Code`` the client maps to its RepositoryNotFound / RevisionNotFound /
    EntryNotFound errors."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>[^/]+)$"), "branch"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/revision/(?P<rev>[^/]+)$"), "info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}$"), "info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?$"), "tree"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "download"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "download"),
    ("POST", re.compile(rf"^/{_REPO}\.git/info/lfs/objects/batch$"), "lfs-batch"),
    ("PUT", re.compile(r"^/lfs-objects/(?P<oid>[0-9a-f]{64})$"), "lfs-put"),
    ("POST", re.compile(r"^/lfs-verify/(?P<oid>[0-9a-f]{64})$"), "lfs-verify"),
]


class _Handler(BaseHTTPRequestHandler):
    state: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the tests read ``requests``
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        path = url.path
        found = next(((kind, m) for verb, pattern, kind in _ROUTES if verb == method and (m := pattern.match(path))), None)
        if found is None:
            self._record("unknown", None)
            self._json(404, {"error": f"the fake hub has no route {method} {path}"})
            return
        kind, match = found
        groups = {k: unquote(v) if v else v for k, v in match.groupdict().items()}
        body = self._body()
        self._record(kind, groups.get("repo"), path=path, query=parse_qs(url.query))
        try:
            self._answer(kind, method, groups, body)
        except Missing as missing:
            payload = json.dumps({"error": str(missing)}).encode()
            self._send(404, payload, {"Content-Type": "application/json", "X-Error-Code": missing.code},
                       include_body=method != "HEAD")

    def _answer(self, kind: str, method: str, groups: dict[str, Any], body: bytes) -> None:
        state = self.state
        if kind == "whoami":
            if not self._token():
                self._json(401, {"error": "Invalid credentials in Authorization header"})
            else:
                self._json(200, {"type": "user", "name": USER, "orgs": [], "auth": {"type": "access_token"}})
        elif kind == "create":
            self._json(*state.create_repo(json.loads(body or b"{}")))
        elif kind == "validate":
            self._json(200, {"errors": [], "warnings": []})
        elif kind == "preupload":
            self._json(*state.preupload(groups["repo"], groups["rev"], json.loads(body)))
        elif kind == "commit":
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            self._json(*state.commit(groups["repo"], groups["rev"], lines))
        elif kind == "branch":
            self._json(*state.create_branch(groups["repo"], groups["rev"], json.loads(body or b"{}")))
        elif kind == "info":
            self._json(*state.info(groups["repo"], groups.get("rev") or "main"))
        elif kind == "tree":
            self._json(*state.tree(groups["repo"], groups["rev"], groups.get("path") or ""))
        elif kind == "lfs-batch":
            self._json(*state.lfs_batch(json.loads(body)))
        elif kind == "lfs-put":
            self._json(*state.lfs_put(groups["oid"], body))
        elif kind == "lfs-verify":
            self._json(*state.lfs_verify(groups["oid"]))
        elif kind == "download":
            data, headers = state.download(groups["repo"], groups["rev"], groups["path"])
            self._send(200, data, headers, include_body=method == "GET")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _token(self) -> Optional[str]:
        auth = self.headers.get("Authorization") or ""
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def _record(self, kind: str, repo: Optional[str], **extra: Any) -> None:
        with self.state.lock:
            self.state.requests.append({"kind": kind, "repo": repo, "method": self.command, "token": self._token(), **extra})

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _send(self, status: int, data: bytes, headers: dict[str, str], include_body: bool = True) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if include_body:
            self.wfile.write(data)
