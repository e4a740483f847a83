"""A local Hugging Face Hub for the tests: the HTTP endpoints huggingface_hub's real client calls to create a repo,
commit files to it and download them again, served from memory by the standard library's HTTP server.

The client under test is the real one (``HfApi``, ``hf_hub_download``, timm's hub functions), pointed at this server
through ``HF_ENDPOINT``. Every file is committed inline ("regular" upload mode), so no LFS or Xet transfer is involved.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPO = r"(?P<repo>[^/]+/[^/]+)"
RESOLVE = re.compile(rf"^/(?:api/)?(?:models/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
PREUPLOAD = re.compile(rf"^/api/models/{REPO}/preupload/(?P<rev>[^/?]+)")
INFO = re.compile(rf"^/api/models/{REPO}(?:/revision/(?P<rev>[^/?]+))?$")
TREE = re.compile(rf"^/api/models/{REPO}/tree/(?P<rev>[^/?]+)")
COMMIT = re.compile(rf"^/api/models/{REPO}/commit/(?P<rev>[^/?]+)")


class LocalHub:
    """The repos the server holds: ``repos[repo_id][path] = bytes``, and each repo's commit messages."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, list[str]] = {}
        self.endpoint = ""

    def commit_id(self, repo_id: str) -> str:
        return hashlib.sha1(f"{repo_id}:{len(self.commits.get(repo_id, []))}".encode()).hexdigest()


def _handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep the test output clean
            pass

        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, payload: object, status: int = 200) -> None:
            self._reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _not_found(self, code: str) -> None:
            self._reply(404, b'{"error": "not found"}', {"X-Error-Code": code, "Content-Type": "application/json"})

        def do_HEAD(self) -> None:
            self._resolve()

        def do_GET(self) -> None:
            self._resolve()

        def _resolve(self) -> None:
            if info := INFO.match(self.path.split("?")[0]):
                return self._info(info["repo"])
            if tree := TREE.match(self.path.split("?")[0]):
                return self._tree(tree["repo"])
            match = RESOLVE.match(self.path.split("?")[0])
            if not match or match["repo"] not in hub.repos:
                return self._not_found("RepoNotFound")
            content = hub.repos[match["repo"]].get(match["path"])
            if content is None:
                return self._not_found("EntryNotFound")
            headers = {"ETag": f'"{_blob_id(content)}"', "X-Repo-Commit": hub.commit_id(match["repo"])}
            self._reply(200, content, headers)

        def _info(self, repo_id: str) -> None:
            """The repo's description that snapshot_download lists the files from."""
            if repo_id not in hub.repos:
                return self._not_found("RepoNotFound")
            files = [{"rfilename": path} for path in sorted(hub.repos[repo_id])]
            self._json({"id": repo_id, "modelId": repo_id, "sha": hub.commit_id(repo_id), "siblings": files})

        def _tree(self, repo_id: str) -> None:
            """The repo's files (one page: no Link header), as snapshot_download lists them."""
            if repo_id not in hub.repos:
                return self._not_found("RepoNotFound")
            files = hub.repos[repo_id].items()
            self._json([{"type": "file", "path": p, "size": len(data), "oid": _blob_id(data)} for p, data in files])

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            body = self._body()
            if path == "/api/repos/create":
                request = json.loads(body)
                repo_id = f"{request.get('organization') or 'me'}/{request['name']}"
                hub.repos.setdefault(repo_id, {})
                return self._json({"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                return self._json({"errors": [], "warnings": []})
            if match := PREUPLOAD.match(path):
                files = json.loads(body)["files"]
                modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                return self._json({"files": modes})
            if match := COMMIT.match(path):
                return self._commit(match["repo"], body)
            self._not_found("EntryNotFound")

        def _commit(self, repo_id: str, body: bytes) -> None:
            if repo_id not in hub.repos:
                return self._not_found("RepoNotFound")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            for line in lines:
                if line["key"] == "file":
                    hub.repos[repo_id][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                elif line["key"] == "header":
                    hub.commits.setdefault(repo_id, []).append(line["value"]["summary"])
            oid = hub.commit_id(repo_id)
            self._json({"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid})

    return Handler


def _blob_id(content: bytes) -> str:
    """The git blob id the hub gives a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@contextmanager
def local_hub() -> Iterator[LocalHub]:
    """Serve a fresh, empty hub on a free local port for the duration of the block."""
    hub = LocalHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
