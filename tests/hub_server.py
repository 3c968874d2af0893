"""A small in-process Hugging Face Hub: the HTTP routes `huggingface_hub` 2.x and `datasets` use to push and load.

The real Hub cannot be reached from the test machines, so the push and load paths are exercised against this
server through `HF_ENDPOINT` (with `HF_HUB_DISABLE_XET=1`, so uploads take the LFS route). It implements, for
model and dataset repos:

    write  POST /api/repos/create                                   create_repo
           POST /api/validate-yaml                                  create_commit's README check
           POST /api/{type}s/{repo}/branch/{branch}                 create_branch
           POST /api/{type}s/{repo}/preupload/{rev}                 upload mode per file (regular / lfs)
           POST /{prefix}{repo}.git/info/lfs/objects/batch          LFS batch: where to PUT each object
           PUT  /__lfs/{oid}  ·  POST /__lfs/verify                 LFS object upload (sha256 checked) + verify
           POST /api/{type}s/{repo}/commit/{rev}[?create_pr=1]      ndjson commit (files, lfsFiles, deletions)
    read   GET  /api/{type}s/{repo}[/revision/{rev}]                repo info (sha, siblings, private)
           GET  /api/{type}s/{repo}/tree/{rev}[/{path}]             tree listing (recursive or not)
           POST /api/{type}s/{repo}/paths-info/{rev}                info on given paths
           GET  /api/{type}s/{repo}/refs                            branches, tags and PR refs
           HEAD/GET /{prefix}{repo}/resolve/{rev}/{path}            file bytes (Range supported), commit/etag headers
           GET  /api/whoami-v2                                      the token's user

Errors carry the Hub's `X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) so the
client raises the same exception types as against the real Hub. Writes need `Authorization: Bearer <token>`;
private repos are invisible without it. Every request is recorded in `FakeHub.requests`, and `FakeHub.fail`
injects a status code for the next matching requests (fault tests).

Usage:

    with FakeHub() as hub:            # hub.endpoint == "http://127.0.0.1:<port>", hub.token == "hf_test..."
        ...                           # point HF_ENDPOINT (or HfApi(endpoint=...)) at it
        hub.files("org/name", "dataset")   # {path: bytes} at main
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

TEST_TOKEN = "hf_test_token_for_the_local_hub"
TEST_USER = "tester"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Paths the Hub stores in LFS on a fresh repo (a subset of its default .gitattributes), plus anything binary or large.
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.parquet", "*.arrow", "*.png", "*.jpg", "*.pt", "*.pth", "*.npz", "*.zip")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.content)}\n".encode()
        )

    @property
    def blob_id(self) -> str:
        return git_blob_sha1(self.pointer if self.lfs else self.content)

    def entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.blob_id, "size": len(self.content), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.content), "pointerSize": len(self.pointer)}
        return entry


@dataclass
class Commit:
    oid: str
    files: dict[str, StoredFile]
    title: str
    description: str = ""
    parent: str | None = None
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)  # branch / "refs/pr/N" → commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    num_prs: int = 0

    def add_commit(self, files: dict[str, StoredFile], title: str, description: str, parent: str | None) -> Commit:
        digest = hashlib.sha1(f"{self.repo_id}{parent}{title}{len(self.commits)}{time.time_ns()}".encode())
        commit = Commit(digest.hexdigest(), files, title, description, parent)
        self.commits[commit.oid] = commit
        return commit

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if revision in self.commits:
            return self.commits[revision]
        return None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class FakeHub:
    """The server and its state. Thread-safe; start with `start()` or as a context manager."""

    def __init__(self, token: str = TEST_TOKEN, host: str = "127.0.0.1"):
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.failures: list[tuple[str, str, int]] = []  # (method, path regex, status), consumed once each
        self.lock = threading.RLock()
        self._server = ThreadingHTTPServer((host, 0), _handler_for(self))
        self._server.daemon_threads = True
        self.endpoint = f"http://{host}:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeHub:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-hub")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection for tests

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            commit = self.repo(repo_id, repo_type).resolve(revision)
            return {path: stored.content for path, stored in commit.files.items()}

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[Commit]:
        """Commits reachable from `revision`, newest first."""
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            chain, commit = [], repo.resolve(revision)
            while commit is not None:
                chain.append(commit)
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return chain

    def fail(self, method: str, path_pattern: str, status: int = 500) -> None:
        """Answer the next `method` request whose path matches `path_pattern` (regex) with `status`."""
        with self.lock:
            self.failures.append((method, path_pattern, status))

    # ------------------------------------------------------------------ routing

    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        url = urlsplit(raw_path)
        query = parse_qs(url.query)
        segments = [unquote(segment) for segment in url.path.split("/")[1:]]
        with self.lock:
            self.requests.append((method, raw_path))
            for failure in self.failures:
                if failure[0] == method and re.search(failure[1], url.path):
                    self.failures.remove(failure)
                    return failure[2], {"X-Error-Message": "injected failure"}, b'{"error": "injected failure"}'
        authorized = headers.get("Authorization") == f"Bearer {self.token}"
        try:
            with self.lock:
                return self._route(method, segments, query, headers, body, authorized)
        except HubError as error:
            response_headers = {"X-Error-Message": error.message}
            if error.code:
                response_headers["X-Error-Code"] = error.code
            return error.status, response_headers, json.dumps({"error": error.message}).encode()

    def _route(self, method, segments, query, headers, body, authorized):
        if segments[:1] == ["api"]:
            rest = segments[1:]
            if method == "GET" and rest == ["whoami-v2"]:
                self._require_auth(authorized)
                return _json({"type": "user", "name": TEST_USER, "orgs": [], "auth": {"type": "access_token"}})
            if method == "POST" and rest == ["repos", "create"]:
                self._require_auth(authorized)
                return self._create_repo(json.loads(body))
            if method == "POST" and rest == ["validate-yaml"]:
                return self._validate_yaml(json.loads(body))
            if len(rest) >= 3 and rest[0] in REPO_TYPES:
                repo_type, repo_id, tail = REPO_TYPES[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:]
                repo = self._get_repo(repo_type, repo_id, authorized)
                if method == "GET" and not tail:
                    return _json(self._repo_info(repo, "main"))
                if method == "GET" and tail[:1] == ["revision"] and len(tail) >= 2:
                    return _json(self._repo_info(repo, "/".join(tail[1:])))
                if method == "GET" and tail[:1] == ["tree"] and len(tail) >= 2:
                    return _json(self._tree(repo, tail[1], "/".join(tail[2:]), _flag(query, "recursive")))
                if method == "POST" and tail[:1] == ["paths-info"] and len(tail) == 2:
                    return _json(self._paths_info(repo, tail[1], headers, body))
                if method == "GET" and tail == ["refs"]:
                    return _json(self._refs(repo))
                if method == "POST" and tail[:1] in (["preupload"], ["commit"], ["branch"]):
                    self._require_auth(authorized)
                    if tail[0] == "preupload":
                        return _json(self._preupload(repo, tail[1], json.loads(body)))
                    if tail[0] == "commit":
                        return _json(self._commit(repo, tail[1], body, _flag(query, "create_pr")))
                    return self._create_branch(repo, "/".join(tail[1:]), json.loads(body or b"{}"))
        if method == "PUT" and segments[:1] == ["__lfs"] and len(segments) == 2:
            return self._lfs_put(segments[1], body)
        if method == "POST" and segments == ["__lfs", "verify"]:
            oid = json.loads(body)["oid"]
            if oid not in self.lfs_objects:
                raise HubError(404, f"LFS object {oid} was never uploaded")
            return _json({"success": True})
        repo_type, offset = ("dataset", 1) if segments[:1] == ["datasets"] else ("model", 0)
        repo_segments = segments[offset:]
        if method == "POST" and len(repo_segments) == 6 and repo_segments[2:] == ["info", "lfs", "objects", "batch"]:
            self._require_auth(authorized)
            repo_id = f"{repo_segments[0]}/{repo_segments[1].removesuffix('.git')}"
            self._get_repo(repo_type, repo_id, authorized)
            return self._lfs_batch(json.loads(body), headers)
        if method in ("GET", "HEAD") and len(repo_segments) >= 5 and repo_segments[2] == "resolve":
            repo = self._get_repo(repo_type, f"{repo_segments[0]}/{repo_segments[1]}", authorized)
            return self._resolve(repo, repo_segments[3], "/".join(repo_segments[4:]), headers)
        raise HubError(404, f"The fake Hub has no route for {method} /{'/'.join(segments)}")

    # ------------------------------------------------------------------ write routes

    def _require_auth(self, authorized: bool) -> None:
        if not authorized:
            raise HubError(401, "Invalid credentials in Authorization header")

    def _create_repo(self, payload: dict) -> tuple[int, dict, bytes]:
        repo_type = payload.get("type") or "model"
        if not payload.get("organization"):
            payload["organization"] = TEST_USER
        repo_id = f"{payload['organization']}/{payload['name']}"
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or ".." in repo_id or len(payload["name"]) > 96:
            raise HubError(400, f"Invalid repo name {repo_id!r}")
        url = f"{self.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return (
                409,
                {"X-Error-Message": "You already created this repo"},
                json.dumps({"error": "You already created this repo", "url": url}).encode(),
            )
        repo = Repo(repo_id, repo_type, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        initial = repo.add_commit(
            {".gitattributes": StoredFile(GITATTRIBUTES.encode(), False)}, "initial commit", "", None
        )
        repo.refs["main"] = initial.oid
        self.repos[(repo_type, repo_id)] = repo
        return _json({"url": url, "name": repo_id})

    def _validate_yaml(self, payload: dict) -> tuple[int, dict, bytes]:
        import yaml

        content = payload["content"]
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
        if not match:
            return _json({"errors": [], "warnings": [{"message": "Empty or missing yaml metadata in repo card"}]})
        errors = []
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            metadata, errors = None, [{"message": f"YAML parse error: {error}"}]
        if not errors and not isinstance(metadata, dict):
            errors = [{"message": "metadata must be a mapping"}]
        if errors:
            return 400, {}, json.dumps({"errors": errors}).encode()
        return _json({"errors": [], "warnings": []})

    def _create_branch(self, repo: Repo, branch: str, payload: dict) -> tuple[int, dict, bytes]:
        if branch in repo.refs:
            raise HubError(409, f"Reference already exists: {branch}")
        start = repo.resolve(payload.get("startingPoint") or "main")
        if start is None:
            raise HubError(404, "Invalid starting point", "RevisionNotFound")
        repo.refs[branch] = start.oid
        return _json({})

    def _preupload(self, repo: Repo, revision: str, payload: dict) -> dict:
        commit = self._commit_at(repo, revision)
        files = []
        for item in payload["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = (
                item["size"] >= LFS_MIN_SIZE
                or b"\0" in sample
                or any(fnmatch.fnmatch(item["path"], pattern) for pattern in LFS_PATTERNS)
            )
            existing = commit.files.get(item["path"])
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else git_blob_sha1(existing.content)
            files.append(
                {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return {"files": files, "commitOid": commit.oid}

    def _lfs_batch(self, payload: dict, headers) -> tuple[int, dict, bytes]:
        if payload.get("operation") != "upload":
            raise HubError(400, "only the upload operation is supported")
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/__lfs/{item['oid']}"},
                    "verify": {"href": f"{self.endpoint}/__lfs/verify"},
                }
            objects.append(entry)
        return (
            200,
            {"Content-Type": "application/vnd.git-lfs+json"},
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
        )

    def _lfs_put(self, oid: str, body: bytes) -> tuple[int, dict, bytes]:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"sha256 of the uploaded body does not match {oid}")
        self.lfs_objects[oid] = body
        return 200, {"ETag": f'"{oid}"'}, b""

    def _commit(self, repo: Repo, revision: str, body: bytes, create_pr: bool) -> dict:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        parent = self._commit_at(repo, revision)
        if header.get("parentCommit") and header["parentCommit"] != parent.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                files[path] = StoredFile(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise HubError(422, f"LFS object {value['oid']} for {path} was not uploaded")
                files[path] = StoredFile(self.lfs_objects[value["oid"]], lfs=True)
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                files = {name: stored for name, stored in files.items() if not name.startswith(prefix)}
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        commit = repo.add_commit(files, header["summary"], header.get("description", ""), parent.oid)
        base = f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"
        pull_request_url = None
        if create_pr:
            repo.num_prs += 1
            repo.refs[f"refs/pr/{repo.num_prs}"] = commit.oid
            pull_request_url = f"{base}/discussions/{repo.num_prs}"
        else:
            repo.refs[revision] = commit.oid
        return {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{base}/commit/{commit.oid}",
            "pullRequestUrl": pull_request_url,
            "hookOutput": "",
        }

    # ------------------------------------------------------------------ read routes

    def _get_repo(self, repo_type: str, repo_id: str, authorized: bool) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise HubError(
                401 if repo is not None or not authorized else 404,
                "Repository not found",
                "RepoNotFound",
            )
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _repo_info(self, repo: Repo, revision: str) -> dict:
        commit = self._commit_at(repo, revision)
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def _entries(self, commit: Commit) -> dict[str, dict]:
        """Every file and folder of a commit, by path."""
        entries: dict[str, dict] = {}
        for path, stored in commit.files.items():
            entries[path] = stored.entry(path)
            parts = path.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                oid = hashlib.sha1(f"{commit.oid}:{folder}".encode()).hexdigest()
                entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
        return entries

    def _tree(self, repo: Repo, revision: str, path: str, recursive: bool) -> list[dict]:
        entries = self._entries(self._commit_at(repo, revision))
        path = path.strip("/")
        if path and (path not in entries or entries[path]["type"] != "directory"):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        prefix = f"{path}/" if path else ""
        selected = [
            entry
            for name, entry in entries.items()
            if name.startswith(prefix) and (recursive or "/" not in name[len(prefix) :])
        ]
        return sorted(selected, key=lambda entry: (entry["type"] != "directory", entry["path"]))

    def _paths_info(self, repo: Repo, revision: str, headers, body: bytes) -> list[dict]:
        if "json" in headers.get("Content-Type", ""):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        entries = self._entries(self._commit_at(repo, revision))
        return [entries[path.strip("/")] for path in paths if path.strip("/") in entries]

    def _refs(self, repo: Repo) -> dict:
        def ref(name: str) -> dict:
            return {"name": name, "ref": f"refs/heads/{name}", "targetCommit": repo.refs[name]}

        branches = [ref(name) for name in sorted(repo.refs) if not name.startswith("refs/")]
        return {"branches": branches, "converts": [], "tags": [], "pullRequests": []}

    def _resolve(self, repo: Repo, revision: str, path: str, headers) -> tuple[int, dict, bytes]:
        commit = self._commit_at(repo, revision)
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        content = stored.content
        response_headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{stored.blob_id}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if stored.lfs:
            response_headers["X-Linked-Etag"] = f'"{stored.sha256}"'
            response_headers["X-Linked-Size"] = str(len(content))
        range_header = headers.get("Range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if not match:
                raise HubError(416, f"unsupported Range {range_header!r}")
            start_text, end_text = match.groups()
            if start_text:
                start, end = int(start_text), int(end_text) if end_text else len(content) - 1
            else:
                start, end = max(0, len(content) - int(end_text)), len(content) - 1
            end = min(end, len(content) - 1)
            response_headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return 206, response_headers, content[start : end + 1]
        return 200, response_headers, content


# ---------------------------------------------------------------------- HTTP plumbing


def _json(payload) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()


def _flag(query: dict, name: str) -> bool:
    return query.get(name, ["0"])[0].lower() in ("1", "true")


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _serve(self) -> None:
            body = self._body()
            status, headers, payload = hub.handle(self.command, self.path, self.headers, body)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _serve

        def log_message(self, format, *args):  # quiet: the test reads `hub.requests` instead
            pass

    return Handler
