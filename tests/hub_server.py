"""A local server that speaks enough of the Hugging Face Hub's HTTP API for ``huggingface_hub`` to upload to a
dataset repo (``create_repo``, ``create_commit`` through preupload and commit, as ``CommitScheduler`` calls them)
and download from it (``repo_info``, ``list_repo_tree``/``list_repo_files``, ``snapshot_download``,
``hf_hub_download``). Point the library at it with ``HF_ENDPOINT`` (read at import: a fresh process, or set before
importing it) and ``HF_HUB_DISABLE_XET=1``. Used by the tests and by ``bench/ratings_load.py --kill --wipe``.

Every file is a regular (non-LFS) file held in memory; each commit gets a new id, and its time is kept so a
caller can see how often the arena pushed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("GET", re.compile(rf"^/api/datasets/{REPO}/revision/(?P<rev>[^/]+)$"), "info"),
    ("GET", re.compile(rf"^/api/datasets/{REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?$"), "tree"),
    ("POST", re.compile(rf"^/api/datasets/{REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/datasets/{REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/datasets/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/datasets/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[tuple[str, float]] = field(default_factory=list)  # (commit id, time received), oldest first

    @property
    def sha(self) -> str:
        return self.commits[-1][0] if self.commits else "0" * 40


class HubServer:
    """``HubServer().start()``; ``.url`` for HF_ENDPOINT; ``.repos`` what was pushed; ``.stop()``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests to read
        # (status, headers) answered to every request instead, to play a Hub that refuses (gated, bad token)
        self.refuse: tuple[int, dict[str, str]] | None = None
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test and bench output clean
                pass

            def do_GET(self) -> None:
                hub.handle(self, "GET")

            def do_HEAD(self) -> None:
                hub.handle(self, "HEAD")

            def do_POST(self) -> None:
                hub.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> HubServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def put(self, repo_id: str, path: str, data: bytes) -> None:
        """A file already in a repo (a dataset someone else published), as one commit."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo())
            repo.files[path] = data
            repo.commits.append((hashlib.sha1(repo_id.encode() + data).hexdigest(), time.time()))

    def commit_times(self, repo_id: str) -> list[float]:
        with self.lock:
            repo = self.repos.get(repo_id)
            return [at for _, at in repo.commits] if repo else []

    # -- the protocol -----------------------------------------------------------------------------------------
    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        parts = urllib.parse.urlsplit(request.path)
        path = urllib.parse.unquote(parts.path)
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        self.requests.append((method, path))
        status, headers, payload = 404, {"X-Error-Code": "EntryNotFound"}, b'{"error": "no such route"}'
        if self.refuse is not None:
            status, headers, payload = *self.refuse, b'{"error": "refused"}'
        else:
            for route_method, pattern, name in ROUTES:
                match = pattern.match(path)
                if match and route_method == method:
                    with self.lock:
                        status, headers, payload = getattr(self, f"_{name}")(match.groupdict(), body)
                    break
        request.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        if method != "HEAD":
            request.wfile.write(payload)

    def _repo(self, groups: dict) -> Repo | None:
        return self.repos.get(groups["repo"])

    @staticmethod
    def _json(value: object, status: int = 200) -> tuple[int, dict, bytes]:
        return status, {}, json.dumps(value).encode()

    @staticmethod
    def _missing(what: str = "RepoNotFound") -> tuple[int, dict, bytes]:
        return 404, {"X-Error-Code": what, "X-Error-Message": "Repository not found"}, b'{"error": "not found"}'

    def _create(self, groups: dict, body: bytes) -> tuple[int, dict, bytes]:
        asked = json.loads(body)
        repo_id = f"{asked['organization']}/{asked['name']}" if asked.get("organization") else asked["name"]
        answer = {"url": f"{self.url}/datasets/{repo_id}", "name": repo_id}
        if repo_id in self.repos:  # the Hub names the existing repo too; create_repo(exist_ok=True) reads it
            return self._json({**answer, "error": "You already created this dataset repo"}, 409)
        self.repos[repo_id] = Repo()
        return self._json(answer)

    def _info(self, groups: dict, body: bytes) -> tuple[int, dict, bytes]:
        repo = self._repo(groups)
        if repo is None:
            return self._missing()
        siblings = [{"rfilename": name} for name in sorted(repo.files)]
        return self._json({"id": groups["repo"], "sha": repo.sha, "private": True, "siblings": siblings})

    def _tree(self, groups: dict, body: bytes) -> tuple[int, dict, bytes]:
        repo = self._repo(groups)
        if repo is None:
            return self._missing()
        under = (groups.get("path") or "").strip("/")
        entries = [
            {"type": "file", "path": name, "size": len(data), "oid": _git_oid(data)}
            for name, data in sorted(repo.files.items())
            if not under or name.startswith(under + "/")
        ]
        return self._json(entries)

    def _preupload(self, groups: dict, body: bytes) -> tuple[int, dict, bytes]:
        if self._repo(groups) is None:
            return self._missing()
        files = json.loads(body)["files"]
        return self._json(
            {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        )

    def _commit(self, groups: dict, body: bytes) -> tuple[int, dict, bytes]:
        repo = self._repo(groups)
        if repo is None:
            return self._missing()
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                repo.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                repo.files.pop(item["value"]["path"], None)
            elif item["key"] != "header":
                return self._json({"error": f"this server does not take {item['key']}"}, 400)
        sha = hashlib.sha1(f"{groups['repo']}{len(repo.commits)}{time.time()}".encode()).hexdigest()
        repo.commits.append((sha, time.time()))
        return self._json({"commitUrl": f"{self.url}/datasets/{groups['repo']}/commit/{sha}", "commitOid": sha})

    def _resolve(self, groups: dict, body: bytes) -> tuple[int, dict, bytes]:
        repo = self._repo(groups)
        if repo is None:
            return self._missing()
        data = repo.files.get(groups["path"])
        if data is None:
            return self._missing("EntryNotFound")
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": repo.sha, "ETag": f'"{_git_oid(data)}"'}
        return 200, headers, data


def _git_oid(data: bytes) -> str:
    """The id git gives a blob (what the Hub reports for a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
