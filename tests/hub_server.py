"""A loopback Hugging Face Hub for the tests: the HTTP endpoints that `huggingface_hub` 2.4 calls to create
a repo, commit files (plain and LFS) and download them, on 127.0.0.1, storing everything on disk.

It is a small git-like store, not a mock: every commit gets an id and a full file tree, file contents are
kept by sha256 under `objects/`, and downloads serve back exactly the bytes received. Two listening
sockets play the two hosts of the real Hub: the API host (`url`, what HF_ENDPOINT points at) and a storage
host on another port (the CDN / S3 of the real Hub). LFS uploads go to signed URLs on the storage host, and
`resolve` answers LFS files with a redirect there, so the client downloads them without its token, as it
does from the real Hub's CDN.

Endpoints (model repos; Spaces alike under /api/spaces/ and /spaces/), as read from huggingface_hub 2.4
(hf_api.py, _commit_api.py, lfs.py, file_download.py, _snapshot_download.py):

    POST /api/repos/create                            create_repo (409 if it exists, 403 foreign namespace;
                                                      type "space" needs its "sdk", as on the Hub)
    GET  /api/whoami-v2                               whoami
    GET  /api/agent-harnesses                         fetched by every client once a day (user agent)
    POST /api/validate-yaml                           create_commit, when README.md is committed
    POST /api/models/{repo}/preupload/{rev}           upload mode per file: "lfs" or "regular", remote oid
    POST /{repo}.git/info/lfs/objects/batch           LFS batch API, "basic" transfer: a signed PUT URL
    PUT  <storage>/upload/{sha256}?...                the basic transfer itself (no token, a signed URL)
    POST /{repo}.git/info/lfs/objects/verify          LFS verify step
    POST /api/models/{repo}/commit/{rev}              ndjson commit: header, file, lfsFile, deleted*
    GET  /api/models/{repo}[/revision/{rev}]          model_info / repo_info (sha, siblings, cardData)
    GET  /api/models/{repo}/tree/{rev}[/{path}]       list_repo_tree (snapshot_download, list_repo_files)
    HEAD /{repo}/resolve/{rev}/{path}                 file metadata: ETag, X-Repo-Commit, Content-Length,
                                                      LFS: 302 + Location, X-Linked-Etag, X-Linked-Size
    GET  /{repo}/resolve/{rev}/{path}                 the file (LFS: the same redirect)
    GET  <storage>/blob/{sha256}?...                  LFS file contents (signed URL)
    GET  /api/models/{repo}/xet-write-token/{rev}     Xet is not offered: 501, see below

Xet: with `hf_xet` installed, huggingface_hub 2.4 uploads LFS files through Xet storage unconditionally
(`_commit_api._upload_files`): it never asks the server which transfer to use and has no fallback to the LFS
batch API. The client only takes the LFS path with `HF_HUB_DISABLE_XET=1`, which the tests set for pushes.
Downloads need no such switch: the client uses Xet only when a `resolve` answer carries `X-Xet-Hash`,
which this server never sends, so it downloads over plain HTTP.

Auth: `tokens` maps a token to (user, orgs). A token that is not known is refused with 401 everywhere (as
the Hub does); writes need a token (401 without one) whose user owns the namespace or belongs to that
org (403 otherwise). Public repos are readable without a token; private ones only by their namespace.

Anything else is answered 404 and recorded in `unhandled`, so a test can assert the client called nothing
this server does not implement.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# What the Hub puts in a new repo's first commit (abridged): these patterns always go to LFS.
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in [
        "*.bin", "*.ckpt", "*.h5", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.parquet", "*.pickle",
        "*.pkl", "*.pt", "*.pth", "*.safetensors", "*.tar", "*.zip", "*tfevents*",
    ]
)  # fmt: skip
LFS_SIZE_LIMIT = 10 * 1024 * 1024  # larger files must use LFS, whatever their content
REPO = r"(?P<repo_id>[\w.-]+/[\w.-]+)"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An error answer: JSON `{"error": message}` plus the X-Error-* headers the client reads."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = headers or {}, extra


@dataclass
class Entry:
    """One file of a commit's tree. `oid` is what git would call it (for LFS: the pointer's blob id)."""

    sha256: str
    size: int
    lfs: bool
    oid: str

    def to_json(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Repo:
    repo_id: str
    private: bool
    created: str
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict] = field(default_factory=dict)  # id -> {parent, message, author, date, tree}
    kind: str = "model"  # or "space"
    sdk: str | None = None  # a Space's


class LoopbackHub:
    """Start with `start()`, stop with `stop()`; `url` is the API endpoint, `root` the on-disk store."""

    def __init__(self, root: Path, tokens: dict[str, tuple[str, list[str]]]):
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(exist_ok=True)
        self.tokens = tokens
        self.secret = secrets.token_bytes(16)  # signs storage URLs
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self.unhandled: list[str] = []  # requests for endpoints this server does not implement
        self.errors: list[str] = []  # tracebacks of requests that crashed a handler
        self.api = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "api"))
        self.storage = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "storage"))
        self.url = f"http://127.0.0.1:{self.api.server_address[1]}"
        self.storage_url = f"http://127.0.0.1:{self.storage.server_address[1]}"
        self._threads: list[threading.Thread] = []

    def start(self) -> LoopbackHub:
        for server in (self.api, self.storage):
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in (self.api, self.storage):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()

    # -- store ----------------------------------------------------------------------------------------

    def _repo_file(self, repo_id: str, kind: str = "model") -> Path:
        return self.root / "repos" / ("" if kind == "model" else f"{kind}s") / (repo_id + ".json")

    def load_repo(self, repo_id: str, kind: str = "model") -> Repo | None:
        path = self._repo_file(repo_id, kind)
        if not path.is_file():
            return None
        return Repo(**json.loads(path.read_text()))

    def _save_repo(self, repo: Repo) -> None:
        path = self._repo_file(repo.repo_id, repo.kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(repo.__dict__, indent=1))
        partial.replace(path)

    def _store(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.root / "objects" / sha
        if not path.exists():
            partial = path.with_suffix(".partial")
            partial.write_bytes(data)
            partial.replace(path)
        return sha

    def object_bytes(self, sha256: str) -> bytes:
        return (self.root / "objects" / sha256).read_bytes()

    def has_object(self, sha256: str, size: int | None = None) -> bool:
        path = self.root / "objects" / sha256
        return path.is_file() and (size is None or path.stat().st_size == size)

    def _commit(self, repo: Repo, branch: str, message: str, author: str, tree: dict[str, dict]) -> str:
        parent = repo.refs.get(branch)
        date = _now()
        commit = {"parent": parent, "message": message, "author": author, "date": date, "tree": tree}
        commit_id = hashlib.sha1(json.dumps(commit).encode()).hexdigest()
        repo.commits[commit_id] = commit
        repo.refs[branch] = commit_id
        return commit_id

    def tree(self, repo_id: str, revision: str = "main", kind: str = "model") -> dict[str, Entry]:
        """The files of `repo_id` at `revision` (a branch or a commit id), for assertions in tests."""
        repo = self.load_repo(repo_id, kind)
        assert repo is not None, f"no repo {repo_id}"
        commit_id = self._resolve(repo, revision)
        return {p: Entry(**e) for p, e in repo.commits[commit_id]["tree"].items()}

    def _resolve(self, repo: Repo, revision: str) -> str:
        if revision in repo.refs:
            return repo.refs[revision]
        if revision in repo.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # -- auth -----------------------------------------------------------------------------------------

    def user(self, authorization: str | None) -> tuple[str, list[str]] | None:
        """The token's (user, orgs); None without a token; 401 for a token this Hub does not know."""
        if not authorization:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    @staticmethod
    def may_write(user: tuple[str, list[str]] | None, namespace: str) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated to write: pass a token with write access")
        name, orgs = user
        if namespace != name and namespace not in orgs:
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace}")

    def readable_repo(self, repo_id: str, user: tuple[str, list[str]] | None, kind: str = "model") -> Repo:
        repo = self.load_repo(repo_id, kind)
        namespace = repo_id.split("/")[0]
        allowed = user is not None and (namespace == user[0] or namespace in user[1])
        if repo is None or (repo.private and not allowed):
            # As the Hub: 401 to anonymous callers, 404 to others, alike for missing and private repos.
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def sign(self, path: str) -> str:
        expires = str(int(time.time()) + 3600)
        sig = hmac.new(self.secret, f"{path}:{expires}".encode(), "sha256").hexdigest()
        return f"{self.storage_url}{path}?expires={expires}&sig={sig}"

    def check_signature(self, path: str, query: dict[str, list[str]]) -> None:
        expires, sig = query.get("expires", ["0"])[0], query.get("sig", [""])[0]
        want = hmac.new(self.secret, f"{path}:{expires}".encode(), "sha256").hexdigest()
        if not hmac.compare_digest(sig, want) or int(expires) < time.time():
            raise HubError(403, "Request signature does not match")

    # -- endpoints ------------------------------------------------------------------------------------

    def create_repo(self, req: Request) -> Response:
        user = self.user(req.authorization)
        body = req.json()
        kind = body.get("type", "model")
        if kind not in ("model", "space"):
            raise HubError(400, "this loopback Hub stores model repos and Spaces only")
        if kind == "space" and not body.get("sdk"):
            raise HubError(400, "Space sdk is required: gradio, docker or static")
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        namespace = body.get("organization") or user[0]
        name = body["name"]
        if namespace != user[0] and namespace not in user[1]:
            raise HubError(
                403, f'You don\'t have the rights to create a model under the namespace "{namespace}"'
            )
        repo_id = f"{namespace}/{name}"
        url = f"{self.url}/{'' if kind == 'model' else 'spaces/'}{repo_id}"
        with self.lock:
            if self.load_repo(repo_id, kind) is not None:
                raise HubError(409, f"You already created this {kind} repo", url=url)
            private = body.get("visibility") == "private"
            repo = Repo(repo_id, private=private, created=_now(), kind=kind, sdk=body.get("sdk"))
            data = GITATTRIBUTES.encode()
            entry = Entry(self._store(data), len(data), lfs=False, oid=git_blob_oid(data))
            self._commit(repo, "main", "initial commit", user[0], {".gitattributes": entry.to_json()})
            self._save_repo(repo)
        return Response.of_json({"url": url, "name": repo_id, "id": secrets.token_hex(12)})

    def whoami(self, req: Request) -> Response:
        user = self.user(req.authorization)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return Response.of_json(
            {
                "type": "user",
                "name": user[0],
                "fullname": user[0],
                "orgs": [{"type": "org", "name": org} for org in user[1]],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def agent_harnesses(self, req: Request) -> Response:
        # The client fetches this registry (to name AI agents in its user agent) once a day: none here.
        return Response.of_json({"standardEnvVars": [], "harnesses": {}})

    def validate_yaml(self, req: Request) -> Response:
        self.user(req.authorization)
        try:
            _front_matter(req.json()["content"])
        except (yaml.YAMLError, ValueError) as err:
            return Response.of_json({"errors": [{"message": f"invalid YAML metadata: {err}"}]}, status=400)
        return Response.of_json({"errors": [], "warnings": []})

    def preupload(self, req: Request, repo_id: str, revision: str, kind: str = "models") -> Response:
        user = self.user(req.authorization)
        self.may_write(user, repo_id.split("/")[0])
        repo = self.readable_repo(repo_id, user, kind[:-1])
        commit_id = self._resolve(repo, unquote(revision))
        tree = repo.commits[commit_id]["tree"]
        patterns = _lfs_patterns(self, tree)
        files = []
        for f in req.json()["files"]:
            lfs = _needs_lfs(f["path"], base64.b64decode(f["sample"]), f["size"], patterns)
            existing = tree.get(f["path"])
            # The client compares it with its own (sha256 for LFS, else git blob id) to skip unchanged files.
            oid = None if existing is None else existing["sha256"] if existing["lfs"] else existing["oid"]
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return Response.of_json({"files": files, "commitOid": commit_id})

    def lfs_batch(self, req: Request, repo_id: str, kind: str = "models") -> Response:
        body = req.json()
        user = self.user(req.authorization)
        if body.get("operation") != "upload":
            raise HubError(400, "this loopback Hub serves LFS downloads through resolve only")
        self.may_write(user, repo_id.split("/")[0])
        self.readable_repo(repo_id, user, kind[:-1])
        if "basic" not in body.get("transfers", ["basic"]):
            raise HubError(400, "only the basic LFS transfer is offered")
        objects = []
        for obj in body["objects"]:
            oid, size = obj["oid"], obj["size"]
            if self.has_object(oid, size):
                objects.append({"oid": oid, "size": size})  # no actions: already uploaded
                continue
            upload = {"href": self.sign(f"/upload/{oid}/{size}"), "expires_in": 3600}
            prefix = "" if kind == "models" else f"{kind}/"
            verify = {"href": f"{self.url}/{prefix}{repo_id}.git/info/lfs/objects/verify", "header": {}}
            objects.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {"upload": upload, "verify": verify},
                }
            )
        return Response.of_json(
            {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json"
        )

    def lfs_upload(self, req: Request, oid: str, size: str) -> Response:
        self.check_signature(f"/upload/{oid}/{size}", req.query)
        data = req.body
        if len(data) != int(size) or hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "uploaded content does not match its oid and size")
        self._store(data)
        return Response(200, b"", {"ETag": f'"{oid}"'})

    def lfs_verify(self, req: Request, repo_id: str, kind: str = "models") -> Response:
        self.may_write(self.user(req.authorization), repo_id.split("/")[0])
        body = req.json()
        if not self.has_object(body["oid"], body["size"]):
            raise HubError(404, f"LFS object {body['oid']} was not uploaded")
        return Response.of_json({"oid": body["oid"], "size": body["size"]})

    def commit(self, req: Request, repo_id: str, revision: str, kind: str = "models") -> Response:
        user = self.user(req.authorization)
        self.may_write(user, repo_id.split("/")[0])
        branch = unquote(revision)
        if req.query.get("create_pr"):
            raise HubError(400, "pull requests are not implemented by the loopback Hub")
        lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first line of a commit must be its header")
        header = lines[0]["value"]
        with self.lock:
            repo = self.readable_repo(repo_id, user, kind[:-1])
            if branch not in repo.refs:
                raise HubError(400, f"can only commit to a branch, not {branch!r}")
            head = repo.refs[branch]
            if header.get("parentCommit") and header["parentCommit"] != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(repo.commits[head]["tree"])
            patterns = _lfs_patterns(self, tree)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    if _needs_lfs(path, data[:512], len(data), patterns):
                        raise HubError(400, f"{path} is a binary or large file: it must be uploaded with LFS")
                    entry = Entry(self._store(data), len(data), lfs=False, oid=git_blob_oid(data))
                    tree[path] = entry.to_json()
                elif key == "lfsFile":
                    oid = value["oid"]
                    size = (self.root / "objects" / oid).stat().st_size if self.has_object(oid) else None
                    if size is None or value.get("size", size) != size:
                        raise HubError(422, f"LFS object {oid} for {path} was never uploaded")
                    entry = Entry(oid, size, lfs=True, oid=git_blob_oid(lfs_pointer(oid, size)))
                    tree[path] = entry.to_json()
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    tree = {p: e for p, e in tree.items() if not p.startswith(prefix)}
                else:
                    raise HubError(400, f"unknown commit operation {key!r}")
            summary = header.get("summary", "")
            message = summary + ("\n\n" + header["description"] if header.get("description") else "")
            commit_id = self._commit(repo, branch, message, user[0], tree)
            self._save_repo(repo)
        prefix = "" if kind == "models" else f"{kind}/"
        return Response.of_json(
            {
                "success": True,
                "commitOid": commit_id,
                "commitUrl": f"{self.url}/{prefix}{repo_id}/commit/{commit_id}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    def repo_info(self, req: Request, repo_id: str, revision: str = "main", kind: str = "models") -> Response:
        repo = self.readable_repo(repo_id, self.user(req.authorization), kind[:-1])
        commit_id = self._resolve(repo, unquote(revision))
        commit = repo.commits[commit_id]
        blobs = req.query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, e in sorted(commit["tree"].items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=e["size"], blobId=e["oid"])
                if e["lfs"]:
                    pointer = lfs_pointer(e["sha256"], e["size"])
                    sibling["lfs"] = {"size": e["size"], "sha256": e["sha256"], "pointerSize": len(pointer)}
            siblings.append(sibling)
        card = {}
        if "README.md" in commit["tree"]:
            card = _front_matter(self.object_bytes(commit["tree"]["README.md"]["sha256"]).decode())
        return Response.of_json(
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit_id,
                "lastModified": commit["date"],
                "createdAt": repo.created,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "library_name": card.get("library_name"),
                "pipeline_tag": card.get("pipeline_tag"),
                "tags": list(card.get("tags") or []),
                "cardData": card or None,
                "siblings": siblings,
                **({"sdk": repo.sdk} if repo.kind == "space" else {}),
            }
        )

    def list_tree(
        self, req: Request, repo_id: str, revision: str, folder: str = "", kind: str = "models"
    ) -> Response:
        repo = self.readable_repo(repo_id, self.user(req.authorization), kind[:-1])
        tree = repo.commits[self._resolve(repo, unquote(revision))]["tree"]
        folder = unquote(folder).strip("/")
        prefix = folder + "/" if folder else ""
        if folder and not any(p.startswith(prefix) for p in tree):
            raise HubError(404, f"{folder} does not exist", "EntryNotFound")
        recursive = req.query.get("recursive", ["false"])[0].lower() == "true"
        files, folders = [], set()
        for path, e in sorted(tree.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            parents = [prefix + "/".join(rest[: i + 1]) for i in range(len(rest) - 1)]
            folders.update(parents if recursive else parents[:1])
            if recursive or len(rest) == 1:
                item = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
                if e["lfs"]:
                    pointer = lfs_pointer(e["sha256"], e["size"])
                    item["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": len(pointer)}
                files.append(item)
        dirs = [
            {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            for d in sorted(folders)
        ]
        return Response.of_json(dirs + files)

    def resolve(self, req: Request, repo_id: str, revision: str, path: str, kind: str = "models") -> Response:
        repo = self.readable_repo(repo_id, self.user(req.authorization), kind[:-1])
        commit_id = self._resolve(repo, unquote(revision))
        entry = repo.commits[commit_id]["tree"].get(unquote(path))
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit_id})
        headers = {"X-Repo-Commit": commit_id}
        if entry["lfs"]:
            # As on the Hub: LFS files live on the storage host; the metadata rides on the redirect.
            headers.update(
                {
                    "Location": self.sign(f"/blob/{entry['sha256']}"),
                    "X-Linked-Etag": f'"{entry["sha256"]}"',
                    "X-Linked-Size": str(entry["size"]),
                    "ETag": f'"{entry["oid"]}"',
                }
            )
            return Response(302, b"", headers)
        headers["ETag"] = f'"{entry["oid"]}"'
        return Response(200, self.object_bytes(entry["sha256"]), headers, "application/octet-stream")

    def blob(self, req: Request, sha256: str) -> Response:
        self.check_signature(f"/blob/{sha256}", req.query)
        if not self.has_object(sha256):
            raise HubError(404, "NoSuchKey")
        return Response(200, self.object_bytes(sha256), {"ETag": f'"{sha256}"'}, "application/octet-stream")

    def xet_token(self, req: Request, repo_id: str, revision: str, kind: str = "models") -> Response:
        raise HubError(501, "Xet storage is not offered by this server: upload with HF_HUB_DISABLE_XET=1")


# -- HTTP plumbing ------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any
    body: bytes

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except json.JSONDecodeError as err:
            raise HubError(400, f"malformed JSON body: {err}") from err


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    @classmethod
    def of_json(cls, value: Any, status: int = 200, content_type: str = "application/json") -> Response:
        return cls(status, json.dumps(value).encode(), {}, content_type)


def _routes(hub: LoopbackHub) -> list[tuple[str, re.Pattern, Any]]:
    table = [
        ("POST", r"/api/repos/create", hub.create_repo),
        ("GET", r"/api/whoami-v2", hub.whoami),
        ("GET", r"/api/agent-harnesses", hub.agent_harnesses),
        ("POST", r"/api/validate-yaml", hub.validate_yaml),
        ("POST", rf"/api/(?P<kind>models|spaces)/{REPO}/preupload/(?P<revision>[^/]+)", hub.preupload),
        ("POST", rf"/api/(?P<kind>models|spaces)/{REPO}/commit/(?P<revision>[^/]+)", hub.commit),
        ("GET", rf"/api/(?P<kind>models|spaces)/{REPO}/xet-write-token/(?P<revision>[^/]+)", hub.xet_token),
        (
            "GET",
            rf"/api/(?P<kind>models|spaces)/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<folder>.+))?",
            hub.list_tree,
        ),
        ("GET", rf"/api/(?P<kind>models|spaces)/{REPO}/revision/(?P<revision>[^/]+)", hub.repo_info),
        ("GET", rf"/api/(?P<kind>models|spaces)/{REPO}", hub.repo_info),
        ("POST", rf"/(?:(?P<kind>spaces)/)?{REPO}\.git/info/lfs/objects/batch", hub.lfs_batch),
        ("POST", rf"/(?:(?P<kind>spaces)/)?{REPO}\.git/info/lfs/objects/verify", hub.lfs_verify),
        ("GET", rf"/(?:(?P<kind>spaces)/)?{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", hub.resolve),
        ("PUT", r"/upload/(?P<oid>[0-9a-f]{64})/(?P<size>\d+)", hub.lfs_upload),
        ("GET", r"/blob/(?P<sha256>[0-9a-f]{64})", hub.blob),
    ]
    return [(method, re.compile(pattern + "$"), fn) for method, pattern, fn in table]


def _handler(hub: LoopbackHub, role: str) -> type[BaseHTTPRequestHandler]:
    storage_routes = {hub.lfs_upload, hub.blob}
    routes = [(m, p, fn) for m, p, fn in _routes(hub) if (fn in storage_routes) == (role == "storage")]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer has a Content-Length

        def log_message(self, format, *args):  # noqa: A002 - quiet: the tests read hub.requests instead
            pass

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline().strip():  # trailers
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            req = Request(method, url.path, parse_qs(url.query), self.headers, self._read_body())
            lookup = "GET" if method == "HEAD" else method
            try:
                for route_method, pattern, fn in routes:
                    match = pattern.match(url.path)
                    if match and route_method == lookup:
                        response = fn(req, **{k: v for k, v in match.groupdict().items() if v is not None})
                        break
                else:
                    with hub.lock:
                        hub.unhandled.append(f"{method} {role}{url.path}")
                    raise HubError(404, f"not implemented by the loopback Hub: {method} {url.path}")
            except Exception as err:  # a bug here: answer 500 and keep it for the test to report
                if not isinstance(err, HubError):
                    with hub.lock:
                        hub.errors.append(f"{method} {url.path}: {traceback.format_exc()}")
                    err = HubError(500, f"loopback Hub bug: {err!r}")
                body = {"error": err.message, **err.extra}
                headers = {"X-Error-Message": err.message, **err.headers}
                if err.code:
                    headers["X-Error-Code"] = err.code
                response = Response(err.status, json.dumps(body).encode(), headers)
            with hub.lock:
                hub.requests.append((method, f"{role}{url.path}", response.status))
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(response.body)

        def do_GET(self):  # noqa: N802
            self._serve("GET")

        def do_HEAD(self):  # noqa: N802
            self._serve("HEAD")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

        def do_PUT(self):  # noqa: N802
            self._serve("PUT")

    return Handler


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return {}
    data = yaml.safe_load(match.group(1)) or {}
    if not isinstance(data, dict):
        raise ValueError("the metadata block must be a mapping")
    return data


def _lfs_patterns(hub: LoopbackHub, tree: dict[str, dict]) -> list[str]:
    entry = tree.get(".gitattributes")
    if entry is None:
        return []
    lines = hub.object_bytes(entry["sha256"]).decode().splitlines()
    return [line.split()[0] for line in lines if "filter=lfs" in line]


def _needs_lfs(path: str, sample: bytes, size: int, patterns: list[str]) -> bool:
    """LFS for .gitattributes patterns, binary content (a NUL byte in the first 512 bytes, as git decides)
    and anything over 10 MB: the rules by which the Hub refuses plain git files."""
    name = path.rsplit("/", 1)[-1]
    matched = any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)
    return size > 0 and (matched or b"\0" in sample or size > LFS_SIZE_LIMIT)
