"""A local npm registry that speaks the registry's read protocol as npm uses it: GET /<name> answers the package
document (its `dist-tags` and, per version, `dist.tarball` and `dist.integrity`), GET /<name>/-/<name>-<v>.tgz
the tarball. It logs every path asked for, so a test can tell a tag resolved (the document) from a pinned
download (the tarball alone)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from typing import Any
from urllib.parse import unquote

from tests.local_http import JsonHandler, LocalServer


def tarball(name: str, version: str) -> bytes:
    """A package's tarball as npm packs it: package/package.json inside a gzipped tar."""
    data = json.dumps({"name": name, "version": version, "main": "index.js"}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, body in (("package/package.json", data), ("package/index.js", b"module.exports = 1;\n")):
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(body), 0o644
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


class FakeNpmRegistry(LocalServer):
    def __init__(self, packages: dict[str, list[str]]) -> None:
        """packages: name -> versions, oldest first; `latest` is the last."""
        self.tarballs = {(name, v): tarball(name, v) for name, versions in packages.items() for v in versions}
        self.latest = {name: versions[-1] for name, versions in packages.items()}
        self.requests: list[str] = []
        super().__init__(_Handler)

    def tarball_url(self, name: str, version: str) -> str:
        return f"{self.origin}/{name}/-/{name}-{version}.tgz"

    def document(self, name: str) -> dict[str, Any]:
        versions = {v: {"name": name, "version": v, "dist": {"tarball": self.tarball_url(name, v),
                                                             "integrity": integrity(data)}}
                    for (n, v), data in self.tarballs.items() if n == name}
        return {"name": name, "dist-tags": {"latest": self.latest[name]}, "versions": versions}


class _Handler(JsonHandler):
    server: FakeNpmRegistry

    def do_GET(self) -> None:
        path = unquote(self.path.split("?")[0])
        self.server.requests.append(path)
        parts = path.strip("/").split("/-/")
        if len(parts) == 2:
            name, file = parts
            version = file.removeprefix(f"{name}-").removesuffix(".tgz")
            data = self.server.tarballs.get((name, version))
            if data is None:
                return self._json(404, {"error": "not found"})
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        if parts[0] in self.server.latest:
            return self._json(200, self.server.document(parts[0]))
        return self._json(404, {"error": "not found"})
