"""A small LangSmith API on 127.0.0.1 for tests: what the `langsmith` client (0.15) sends for tracing and feedback.

- GET /info: server info; it advertises multipart ingestion and zstd compression, as LangSmith does,
  so the client sends its real default wire format.
- POST /runs/multipart: multipart/form-data, optionally `Content-Encoding: zstd`, parts named
  `post.<run id>`, `patch.<run id>` and `<op>.<run id>.<field>` (inputs, outputs, events, extra, error,
  serialized), plus `feedback.<id>` parts; POST /runs/batch ({"post": [...], "patch": [...]}),
  POST /runs and PATCH /runs/<id> are accepted too.
- POST /feedback, PATCH /feedback/<id>.
Runs are merged by id into `runs`; feedback into `feedback`. `delay_s` makes every answer slow
(for "LangSmith is slow" tests); `first_answer_done` is set when the first answer has been sent.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.local_http import JsonHandler, LocalServer

API_KEY = "lsv2_local_test_key"
INFO = {
    "version": "0.11.0",
    "license_expiration_time": None,
    "batch_ingest_config": {"use_multipart_endpoint": True, "scale_up_qsize_trigger": 1000,
                            "scale_up_nthreads_limit": 16, "scale_down_nempty_trigger": 4, "size_limit": 100,
                            "size_limit_bytes": 20_971_520},
    "instance_flags": {"zstd_compression_enabled": True},
}


TENANT = "8d2d4c6e-3b7a-4f57-9a39-6a1b7f4c2e10"


def project(name: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"project:{name}")), "name": name, "tenant_id": TENANT,
            "start_time": "2026-11-01T00:00:00+00:00", "reference_dataset_id": None, "extra": None}


def _decompress(body: bytes) -> bytes:
    import zstandard

    out = bytearray()
    reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
    while chunk := reader.read(1 << 16):
        out.extend(chunk)
    return bytes(out)


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    return [(str(part.get_param("name", header="content-disposition")), part.get_payload(decode=True) or b"")
            for part in message.iter_parts()]


class _Handler(JsonHandler):
    server: FakeLangSmithServer

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data.extend(self.rfile.read(size))
                self.rfile.readline()
            return bytes(data)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, body: Any) -> None:
        srv = self.server
        if srv.delay_s:
            time.sleep(srv.delay_s)
        self._json(status, body)
        srv.first_answer_done.set()
        with srv.lock:
            srv.answered.append(self.path.split("?", 1)[0])

    def _route(self, method: str) -> None:
        srv = self.server
        path = self.path.split("?", 1)[0].rstrip("/")
        raw = self._body()
        with srv.lock:
            srv.requests.append({"method": method, "path": path, "api_key_ok": self.headers.get("x-api-key") == API_KEY,
                                 "encoding": self.headers.get("Content-Encoding")})
        if self.headers.get("x-api-key") != API_KEY:
            self._answer(401, {"detail": "Invalid token"})
            return
        if method == "GET" and path == "/info":
            self._answer(200, INFO)
            return
        if method == "GET" and path == "/sessions":  # projects are created by the first run that names them
            name = parse_qs(urlparse(self.path).query).get("name", [""])[0]
            with srv.lock:
                known = any(r.get("session_name") == name for r in srv.runs.values())
            self._answer(200, [project(name)] if known else [])  # type: ignore[arg-type]
            return
        if method == "POST" and path == "/runs/multipart":
            if self.headers.get("Content-Encoding") == "zstd":
                raw = _decompress(raw)
            srv.ingest_parts(parse_multipart(self.headers["Content-Type"], raw))
            self._answer(202, {})
            return
        if method == "POST" and path == "/runs/batch":
            data = json.loads(raw)
            for op in ("post", "patch"):
                for run in data.get(op) or []:
                    srv.merge_run(str(run["id"]), run)
            self._answer(202, {})
            return
        if method == "POST" and path == "/runs":
            run = json.loads(raw)
            srv.merge_run(str(run["id"]), run)
            self._answer(202, {})
            return
        if method == "PATCH" and path.startswith("/runs/"):
            srv.merge_run(path.rsplit("/", 1)[1], json.loads(raw))
            self._answer(202, {})
            return
        if method == "POST" and path == "/feedback":
            fb = json.loads(raw)
            with srv.lock:
                if fb["id"] in srv.feedback:
                    self._answer(409, {"detail": "feedback already exists"})
                    return
                srv.feedback[fb["id"]] = fb
            self._answer(200, fb)
            return
        if method == "PATCH" and path.startswith("/feedback/"):
            fid = path.rsplit("/", 1)[1]
            with srv.lock:
                if fid not in srv.feedback:
                    self._answer(404, {"detail": "feedback not found"})
                    return
                srv.feedback[fid].update(json.loads(raw))
                srv.feedback_updates += 1
            self._answer(200, srv.feedback[fid])
            return
        self._answer(404, {"detail": f"no route {method} {path}"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PATCH(self) -> None:
        self._route("PATCH")


class FakeLangSmithServer(LocalServer):
    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(_Handler)
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.runs: dict[str, dict[str, Any]] = {}
        self.feedback: dict[str, dict[str, Any]] = {}
        self.feedback_updates = 0
        self.first_answer_done = threading.Event()
        self.answered: list[str] = []  # paths, once their answer was sent

    @property
    def api_url(self) -> str:
        return self.origin

    def merge_run(self, run_id: str, fields: dict[str, Any]) -> None:
        with self.lock:
            self.runs.setdefault(run_id, {"id": run_id}).update(fields)

    def ingest_parts(self, parts: list[tuple[str, bytes]]) -> None:
        for name, payload in parts:
            pieces = name.split(".")
            value = json.loads(payload) if payload else None
            if pieces[0] == "feedback":
                with self.lock:
                    self.feedback[pieces[1]] = value
            elif pieces[0] in ("post", "patch") and len(pieces) == 2:
                self.merge_run(pieces[1], value or {})
            elif pieces[0] in ("post", "patch") and len(pieces) == 3:
                self.merge_run(pieces[1], {pieces[2]: value})

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return True
            time.sleep(0.05)
        return False

    def runs_of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.runs.values() if str(r.get("trace_id")) == trace_id]
