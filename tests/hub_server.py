"""A small in-memory fake of the Hugging Face Hub HTTP API, for tests.

The real ``huggingface_hub`` client (``HfApi``, ``hf_hub_download``, ``snapshot_download``, ...) can be pointed
at it, so upload/download code is exercised end to end without network access. Only stdlib is used for the server.

Usage from any test module::

    from tests.hub_server import fake_hub  # noqa: F401  (pytest fixture)

    def test_push(fake_hub):
        HfApi().create_repo("org/model")  # the fixture already patched HF_ENDPOINT, cache, token, ...
        ...
        assert fake_hub.uploaded_paths("org/model")[-1] == ["adapter_config.json"]

or ``with FakeHub() as hub: ...`` plus ``patch_hf_env(monkeypatch, hub, cache_dir)`` for a custom fixture.

Behaviour mirrors the real Hub where it matters:
* repo ids must be ``namespace/name``; ``create_repo`` makes an "initial commit" adding ``.gitattributes``;
* every file is a regular git blob (``preupload`` always answers ``uploadMode: "regular"``, no LFS/Xet);
  its oid and ETag are the git blob sha1 of the content, which lets the client skip unchanged files;
* a revision is a branch, a tag, or a full 40-hex commit sha. Committing to an unknown branch creates it from main;
* errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so the client raises
  ``RepositoryNotFoundError`` / ``RevisionNotFoundError`` / ``RemoteEntryNotFoundError``.

Routes (``{t}`` is ``models``/``datasets``/``spaces``; ``{repo}`` is ``ns/name``; ``{rev}`` is URL-quoted):
  POST /api/repos/create (409 + ``url`` if it exists), DELETE /api/repos/delete,
  POST /api/validate-yaml (400 with the reasons when :func:`validate_card_yaml` finds any),
  GET /api/whoami-v2, GET /api/{t}/{repo}[/revision/{rev}] (info: sha, siblings; ``?blobs=true`` adds sizes),
  GET /api/{t}/{repo}/tree/{rev}[/{path}][?recursive=true], GET /api/{t}/{repo}/commits/{rev} (newest first),
  GET /api/{t}/{repo}/refs, POST /api/{t}/{repo}/paths-info/{rev}, POST /api/{t}/{repo}/preupload/{rev},
  POST /api/{t}/{repo}/commit/{rev} (NDJSON), POST /api/{t}/{repo}/branch/{name}, POST /api/{t}/{repo}/tag/{rev},
  GET|HEAD /[datasets/|spaces/]{repo}/resolve/{rev}/{path} (200 with X-Repo-Commit, ETag, Content-Length; Range).
Not modelled: auth/private visibility checks, pull requests (``create_pr`` -> 400), LFS/Xet uploads (-> 400).

Test helpers (``commits``, ``uploaded_paths``) list commits of one branch **oldest first** (index 0 is the initial
commit, index -1 the latest), whereas the HTTP ``list_repo_commits`` answers newest first like the real Hub.
"""

from __future__ import annotations

import base64
import hashlib
import re
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

USER = "testuser"
TOKEN = "hf_testtoken"
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha(data: bytes) -> str:
    """Git blob sha1 of ``data`` (what ``git hash-object`` prints); the Hub's oid/ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _is_sha(rev: str) -> bool:
    return len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)


class HubError(Exception):
    """An HTTP error answer: status, ``X-Error-Code`` (may be None), message and extra JSON body fields."""

    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None, **body):
        super().__init__(message)
        self.status, self.code, self.message, self.commit, self.body = status, code, message, commit, body


@dataclass
class _Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, str]  # full snapshot: path -> blob sha
    changed: list[str]  # paths uploaded by this commit
    deleted: list[str]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class FakeHub:
    """In-memory Hub served on ``127.0.0.1`` by a ``ThreadingHTTPServer``; ``endpoint`` is its base URL."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._addr = (host, port)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.validated: list[str] = []  # every card text POSTed to /api/validate-yaml, in order
        self.blobs: dict[str, bytes] = {}
        self.request_log: list[tuple[str, str]] = []  # (method, raw URL path without query), in arrival order
        self.endpoint = ""

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> FakeHub:
        """Start serving in a daemon thread and set ``endpoint``."""
        self._server = ThreadingHTTPServer(self._addr, _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self.endpoint = "http://%s:%d" % self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name="FakeHub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- test helpers
    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> None:
        """Create a repo (with its initial ``.gitattributes`` commit); no-op if it exists."""
        with self._lock:
            if (repo_type, repo_id) not in self.repos:
                repo = self.repos[(repo_type, repo_id)] = _Repo(repo_type, repo_id, private, _now())
                self._apply_commit(repo, "main", [("add", ".gitattributes", _GITATTRIBUTES)], "initial commit")

    def put_file(self, repo_id: str, path: str, data: bytes, *, revision: str = "main",
                 repo_type: str = "model", message: str | None = None) -> str:
        """Plant ``data`` at ``path`` as a new commit on branch ``revision`` (repo created if needed); returns the oid."""
        self.create_repo(repo_id, repo_type)
        with self._lock:
            repo = self.repos[(repo_type, repo_id)]
            return self._apply_commit(repo, revision, [("add", path, data)], message or f"Upload {path}").oid

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """All files of the repo at ``revision`` (branch, tag or sha) as ``{path: content}``."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            return {p: self.blobs[s] for p, s in repo.commits[self._resolve(repo, revision)].files.items()}

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[dict]:
        """History of ``revision``, oldest first: dicts with ``oid``, ``title``, ``message``, ``date``,
        ``paths`` (uploaded by the commit), ``deleted`` and ``files`` (all paths present after it)."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            return [{"oid": c.oid, "title": c.title, "message": c.message, "date": c.date, "paths": list(c.changed),
                     "deleted": list(c.deleted), "files": sorted(c.files)} for c in self._history(repo, revision)]

    def uploaded_paths(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[list[str]]:
        """Paths uploaded by each commit of ``revision``, oldest first (``[0]`` is ``['.gitattributes']``)."""
        return [c["paths"] for c in self.commits(repo_id, revision, repo_type)]

    # ---------------------------------------------------------------- state (call with the lock held)
    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository not found: {repo_type} {repo_id}")
        return repo

    def _resolve(self, repo: _Repo, rev: str) -> str:
        if rev in repo.branches:
            return repo.branches[rev]
        if rev in repo.tags:
            return repo.tags[rev]
        if rev in repo.commits:
            return rev
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def _history(self, repo: _Repo, rev: str) -> list[_Commit]:
        chain, oid = [], self._resolve(repo, rev)
        while oid is not None:
            chain.append(repo.commits[oid])
            oid = repo.commits[oid].parent
        return chain[::-1]

    def _apply_commit(self, repo: _Repo, branch: str, ops: list[tuple], title: str, message: str = "",
                      parent_commit: str | None = None) -> _Commit:
        """Apply ``ops`` (("add", path, bytes) / ("del", path, None) / ("deldir", path, None)) on ``branch``."""
        if branch in repo.tags or (branch not in repo.branches and branch in repo.commits):
            raise HubError(400, None, f"Can only commit to a branch, not to {branch}")
        base = repo.branches.get(branch, repo.branches.get("main"))
        if parent_commit is not None and (base is None or not base.startswith(parent_commit)):
            raise HubError(412, None, f"Parent commit {parent_commit} is not the head of {branch} ({base})")
        files = dict(repo.commits[base].files) if base else {}
        changed, deleted = [], []
        for kind, path, data in ops:
            if kind == "add":
                sha = git_blob_sha(data)
                self.blobs[sha], files[path] = data, sha
                changed.append(path)
            elif kind == "del":
                if files.pop(path, None) is None:
                    raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
                deleted.append(path)
            else:
                prefix = path.rstrip("/") + "/"
                gone = [p for p in files if p.startswith(prefix)]
                if not gone:
                    raise HubError(404, "EntryNotFound", f"A folder with this name doesn't exist: {path}")
                for p in gone:
                    del files[p]
                deleted.extend(gone)
        seed = json.dumps([repo.repo_id, base, title, time.time_ns(), len(repo.commits), sorted(files.items())])
        commit = _Commit(hashlib.sha1(seed.encode()).hexdigest(), base, title, message, _now(), files, changed, deleted)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def _info(self, repo: _Repo, oid: str, blobs: bool) -> dict:
        commit = repo.commits[oid]
        siblings = [{"rfilename": p, **({"size": len(self.blobs[s]), "blobId": s} if blobs else {})}
                    for p, s in sorted(commit.files.items())]
        return {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0], "sha": oid, "lastModified": commit.date,
                "createdAt": repo.created, "private": repo.private, "disabled": False, "gated": False,
                "downloads": 0, "likes": 0, "tags": [], "siblings": siblings, **self._card_data(commit.files)}

    def _card_data(self, files: dict[str, str]) -> dict:
        """``cardData``: README.md's YAML metadata, as the real Hub returns it in model info (public even when gated)."""
        import yaml

        sha = files.get("README.md")
        match = re.match(r"^\s*---\s*\n(.*?)\n---", self.blobs[sha].decode("utf-8", "replace"), re.DOTALL) if sha else None
        try:
            data = yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError:
            data = None
        return {"cardData": data} if isinstance(data, dict) else {}

    def _tree(self, files: dict[str, str], prefix: str, recursive: bool) -> list[dict]:
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        entries: dict[str, dict] = {}
        for path, sha in sorted(files.items()):
            if not path.startswith(base):
                continue
            parts = path[len(base):].split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                d = base + "/".join(parts[:i])
                below = sorted((p, s) for p, s in files.items() if p.startswith(d + "/"))
                oid = hashlib.sha1(json.dumps(below).encode()).hexdigest()
                entries.setdefault(d, {"type": "directory", "oid": oid, "path": d, "size": 0})
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "oid": sha, "size": len(self.blobs[sha]), "path": path}
        if base and not entries:
            raise HubError(404, "EntryNotFound", f"Path not found: {prefix}")
        return list(entries.values())

    # ---------------------------------------------------------------- HTTP routing
    def handle(self, method: str, raw_path: str, query: dict, body: bytes) -> tuple[int, dict, object]:
        """Route one request; returns (status, extra headers, payload) where payload is JSON-able or bytes."""
        segs = raw_path.strip("/").split("/")
        with self._lock:
            if segs[0] == "api":
                return self._api(method, segs[1:], query, body)
            repo_type = "model"
            if segs[0] in ("datasets", "spaces"):
                repo_type, segs = _TYPES[segs[0]], segs[1:]
            if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
                repo = self._repo(repo_type, f"{unquote(segs[0])}/{unquote(segs[1])}")
                oid = self._resolve(repo, unquote(segs[3]))
                path = "/".join(unquote(s) for s in segs[4:])
                sha = repo.commits[oid].files.get(path)
                if sha is None:
                    raise HubError(404, "EntryNotFound", f"{path} does not exist at {oid}", commit=oid)
                headers = {"X-Repo-Commit": oid, "ETag": f'"{sha}"', "Accept-Ranges": "bytes",
                           "Content-Type": "application/octet-stream"}
                return 200, headers, self.blobs[sha]
            raise HubError(404, None, f"FakeHub: no route for {method} {raw_path}")

    def _api(self, method: str, segs: list[str], query: dict, body: bytes) -> tuple[int, dict, object]:
        route = (method, "/".join(segs))
        if route == ("POST", "repos/create"):
            payload = json.loads(body or b"{}")
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            url = f"{self.endpoint}/{_PREFIX[repo_type]}{repo_id}"
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, None, f"You already created this {repo_type} repo", url=url)  # client reads url
            self.create_repo(repo_id, repo_type, payload.get("visibility") == "private" or bool(payload.get("private")))
            return 200, {}, {"url": url, "name": repo_id, "id": repo_id}
        if route == ("DELETE", "repos/delete"):
            payload = json.loads(body or b"{}")
            key = (payload.get("type") or "model", f"{payload.get('organization') or USER}/{payload['name']}")
            self._repo(*key)
            del self.repos[key]
            return 200, {}, {}
        if route == ("POST", "validate-yaml"):
            payload = json.loads(body or b"{}")
            self.validated.append(payload.get("content", ""))
            errors = validate_card_yaml(payload.get("content", ""), payload.get("repoType") or "model")
            if errors:
                raise HubError(400, None, "; ".join(errors))
            return 200, {}, {"errors": [], "warnings": []}
        if route == ("GET", "whoami-v2"):
            return 200, {}, {"type": "user", "name": USER, "fullname": "Test User", "orgs": [],
                             "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}}
        if len(segs) < 3 or segs[0] not in _TYPES:
            raise HubError(404, None, f"FakeHub: no route for {method} /api/{'/'.join(segs)}")
        repo = self._repo(_TYPES[segs[0]], f"{unquote(segs[1])}/{unquote(segs[2])}")
        action, args = (segs[3] if len(segs) > 3 else ""), [unquote(s) for s in segs[4:]]
        if method == "GET" and action in ("", "revision"):
            oid = self._resolve(repo, args[0] if action else "main")
            return 200, {}, self._info(repo, oid, blobs=query.get("blobs", [""])[0].lower() == "true")
        if method == "GET" and action == "tree":
            files = repo.commits[self._resolve(repo, args[0])].files
            recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
            return 200, {}, self._tree(files, "/".join(args[1:]), recursive)
        if method == "GET" and action == "commits":
            history = self._history(repo, args[0])[::-1]
            return 200, {}, [{"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
                              "authors": [{"user": USER}]} for c in history]
        if method == "GET" and action == "refs":
            refs = {kind: [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": o} for n, o in sorted(items.items())]
                    for kind, items in (("heads", repo.branches), ("tags", repo.tags))}
            return 200, {}, {"branches": refs["heads"], "tags": refs["tags"], "converts": [], "pullRequests": []}
        if method == "POST" and action == "paths-info":
            form = parse_qs(body.decode())
            tree = {e["path"]: e for e in self._tree(repo.commits[self._resolve(repo, args[0])].files, "", True)}
            return 200, {}, [tree[p] for p in form.get("paths", []) if p in tree]
        if method == "POST" and action == "preupload":
            if "create_pr" in query:
                raise HubError(400, None, "FakeHub does not support pull requests")
            rev = args[0]  # an unknown branch will be created from main by the commit
            known = rev in repo.branches or rev in repo.tags or rev in repo.commits
            files = repo.commits[self._resolve(repo, rev if known else "main")].files
            return 200, {}, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                        "oid": files.get(f["path"])} for f in json.loads(body)["files"]]}
        if method == "POST" and action == "commit":
            if "create_pr" in query:
                raise HubError(400, None, "FakeHub does not support pull requests")
            return 200, {}, self._commit_from_ndjson(repo, args[0], body)
        if method == "POST" and action == "branch":  # body: {"startingPoint": rev} (optional)
            if args[0] in repo.branches:
                raise HubError(409, None, f"Reference already exists: {args[0]}")
            start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
            repo.branches[args[0]] = self._resolve(repo, start)
            return 200, {}, {}
        if method == "POST" and action == "tag":  # /tag/{revision}, body: {"tag": name, "message": ...}
            tag = json.loads(body)["tag"]
            if tag in repo.tags:
                raise HubError(409, None, f"Tag already exists: {tag}")
            repo.tags[tag] = self._resolve(repo, args[0])
            return 200, {}, {}
        raise HubError(404, None, f"FakeHub: no route for {method} /api/{'/'.join(segs)}")

    def _commit_from_ndjson(self, repo: _Repo, branch: str, body: bytes) -> dict:
        header, ops = {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                raw = value["content"]
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                ops.append(("add", value["path"], data))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append(("del" if key == "deletedFile" else "deldir", value["path"], None))
            else:
                raise HubError(400, None, f"FakeHub only supports regular files, got {key!r}")
        commit = self._apply_commit(repo, branch, ops, header.get("summary") or "Commit",
                                    header.get("description", ""), header.get("parentCommit"))
        url = f"{self.endpoint}/{_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        return {"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": "",
                "pullRequestUrl": None}


class _Handler(BaseHTTPRequestHandler):
    """Turns HTTP requests into ``FakeHub.handle`` calls; HTTP/1.1 keep-alive, Content-Length on every answer."""

    protocol_version = "HTTP/1.1"
    timeout = 30

    def _dispatch(self) -> None:
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        hub.request_log.append((self.command, url.path))
        status, headers, payload = 500, {}, b""
        try:
            status, headers, payload = hub.handle(self.command, url.path, parse_qs(url.query), self._read_body())
        except HubError as err:
            status, payload = err.status, {"error": err.message, **err.body}
            headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
            headers.update({"X-Error-Code": err.code} if err.code else {})
            headers.update({"X-Repo-Commit": err.commit} if err.commit else {})
        except Exception as err:  # a bug in the fake: answer 500 rather than hang the client
            status, payload = 500, {"error": f"FakeHub internal error: {err!r}"}
        if not isinstance(payload, bytes):
            headers.setdefault("Content-Type", "application/json")
            payload = json.dumps(payload).encode()
        payload, status = self._apply_range(payload, status, headers)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _apply_range(self, payload: bytes, status: int, headers: dict) -> tuple[bytes, int]:
        """Honour a simple ``Range: bytes=a-b`` on a successful file GET (used by resumed downloads)."""
        spec = self.headers.get("Range", "")
        if status != 200 or self.command != "GET" or "ETag" not in headers or not spec.startswith("bytes="):
            return payload, status
        first, _, last = spec[6:].split(",")[0].partition("-")
        start = int(first) if first else max(0, len(payload) - int(last))
        end = min(int(last), len(payload) - 1) if first and last else len(payload) - 1
        headers["Content-Range"] = f"bytes {start}-{end}/{len(payload)}"
        return payload[start:end + 1], 206

    def _read_body(self) -> bytes:  # the client always sends Content-Length (never chunked) on these routes
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass



# -- the Hub's card metadata rules, for POST /api/validate-yaml ------------------------------------------------
#: Licence ids the Hub accepts in ``license:`` (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl
gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr
mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""".split())
#: Task ids the Hub accepts as ``pipeline_tag`` and as a model-index ``task.type`` (a subset of huggingface.js tasks).
HUB_TASKS = frozenset("""
image-classification zero-shot-image-classification image-text-to-text visual-question-answering
image-to-text text-generation text-classification feature-extraction image-feature-extraction
image-segmentation object-detection zero-shot-object-detection question-answering summarization translation
fill-mask token-classification sentence-similarity text-to-image image-to-image document-question-answering
""".split())
BASE_MODEL_RELATIONS = frozenset({"adapter", "merge", "quantized", "finetune"})
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def validate_card_yaml(content: str, repo_type: str = "model") -> list[str]:
    """The reasons the Hub would refuse this card's metadata ([] when it passes).

    Checks with huggingface_hub's own parsing (``ModelCardData`` with ``ignore_metadata_errors=False``, which
    turns ``model-index`` into ``EvalResult`` objects and raises on a malformed one), then the Hub's field
    rules: licence ids (``other`` needs ``license_name`` + ``license_link``), task ids, ``base_model`` as Hub
    repo ids, ``base_model_relation`` values and that it needs a ``base_model``, string lists for tags/datasets."""
    import yaml
    from huggingface_hub import ModelCardData

    match = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
    if not match:
        return ["no YAML metadata block between --- lines at the top of the card"]
    try:
        data = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        return [f"metadata is not valid YAML: {exc}"]
    if not isinstance(data, dict):
        return ["metadata must be a mapping"]
    errors: list[str] = []
    if repo_type == "model":
        try:
            ModelCardData(ignore_metadata_errors=False, **data)
        except Exception as exc:  # noqa: BLE001 - huggingface_hub raises ValueError/KeyError/TypeError
            errors.append(f"huggingface_hub ModelCardData/EvalResult refused the metadata: {type(exc).__name__}: {exc}")
    license = data.get("license")
    if license is not None:
        if license not in HUB_LICENSES:
            errors.append(f"license {license!r} is not a Hub licence id (use `other` with license_name and license_link)")
        if license == "other" and not (data.get("license_name") and data.get("license_link")):
            errors.append("license: other needs license_name and license_link")
    if data.get("license_name") is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", str(data["license_name"])):
        errors.append(f"license_name {data['license_name']!r} must be lowercase letters, digits, '.' and '-'")
    if data.get("pipeline_tag") is not None and data["pipeline_tag"] not in HUB_TASKS:
        errors.append(f"pipeline_tag {data['pipeline_tag']!r} is not a Hub task")
    base = data.get("base_model")
    if base is not None:
        for repo in [base] if isinstance(base, str) else (base if isinstance(base, list) else [base]):
            if not isinstance(repo, str) or not _HUB_REPO_ID.match(repo):
                errors.append(f"base_model {repo!r} is not a Hub model id (namespace/name)")
    relation = data.get("base_model_relation")
    if relation is not None:
        if relation not in BASE_MODEL_RELATIONS:
            errors.append(f"base_model_relation {relation!r} must be one of {sorted(BASE_MODEL_RELATIONS)}")
        if base is None:
            errors.append("base_model_relation needs a base_model")
    for key in ("tags", "datasets", "language", "metrics"):
        value = data.get(key)
        if value is not None and not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            errors.append(f"{key} must be a string or a list of strings")
    if data.get("library_name") is not None and not isinstance(data["library_name"], str):
        errors.append("library_name must be a string")
    for index in data.get("model-index") or []:
        for result in (index or {}).get("results") or []:
            task = (result or {}).get("task") or {}
            if task.get("type") not in HUB_TASKS:
                errors.append(f"model-index task type {task.get('type')!r} is not a Hub task")
            for metric in (result or {}).get("metrics") or []:
                if not isinstance(metric.get("value"), (int, float)) or isinstance(metric.get("value"), bool):
                    errors.append(f"model-index metric {metric.get('type')!r} value must be a number")
    return errors


def patch_hf_env(monkeypatch: pytest.MonkeyPatch, hub: FakeHub, cache_dir) -> None:
    """Point ``huggingface_hub`` at ``hub``: env vars *and* the constants it read at import time.

    Sets HF_ENDPOINT, HF_HOME/HF_HUB_CACHE (under ``cache_dir``), HF_TOKEN=hf_testtoken, HF_HUB_OFFLINE=0,
    HF_HUB_DISABLE_XET=1 and quiet telemetry/progress bars. ``monkeypatch`` undoes it all.
    """
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api
    import huggingface_hub.utils._cache_manager as cache_manager

    home = str(Path(cache_dir) / "hf_home")
    hub_cache = str(Path(cache_dir) / "hf_home" / "hub")
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": home, "HF_HUB_CACHE": hub_cache, "HF_TOKEN": TOKEN,
           "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "HF_HUB_DISABLE_SYMLINKS_WARNING": "1", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    for name in ("NO_PROXY", "no_proxy"):  # never send 127.0.0.1 through a proxy
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))
    consts = {"ENDPOINT": hub.endpoint,
              "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
              "HF_HOME": home, "HF_HUB_CACHE": hub_cache, "HF_TOKEN_PATH": f"{home}/token",
              "HF_STORED_TOKENS_PATH": f"{home}/stored_tokens", "HF_HUB_OFFLINE": False,
              "HF_HUB_DISABLE_XET": True, "HF_HUB_DISABLE_TELEMETRY": True, "HF_HUB_DISABLE_IMPLICIT_TOKEN": False}
    for name, value in consts.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)  # module-level helpers (hf_api.upload_folder, ...)
    monkeypatch.setattr(cache_manager, "HF_HUB_CACHE", hub_cache)  # default of scan_cache_dir()


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A started ``FakeHub`` with ``huggingface_hub`` pointed at it and its cache under ``tmp_path``."""
    from huggingface_hub.utils._http import close_session

    with FakeHub() as hub:
        patch_hf_env(monkeypatch, hub, tmp_path)
        close_session()  # drop pooled connections from earlier tests
        yield hub
        close_session()
