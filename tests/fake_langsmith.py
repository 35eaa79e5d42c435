"""A small LangSmith API on 127.0.0.1 for tests: what the `langsmith` client (0.15) sends for tracing and feedback.

- GET /info: server info; it advertises multipart ingestion and zstd compression, as LangSmith does,
  so the client sends its real default wire format.
- POST /runs/multipart: multipart/form-data, optionally `Content-Encoding: zstd`, parts named
  `post.<run id>`, `patch.<run id>` and `<op>.<run id>.<field>` (inputs, outputs, events, extra, error,
  serialized), plus `feedback.<id>` parts; POST /runs/batch ({"post": [...], "patch": [...]}),
  POST /runs and PATCH /runs/<id> are accepted too.
- POST /feedback, PATCH /feedback/<id>.
- Datasets and experiments, as `Client.create_dataset` / `create_examples` / `list_examples` and
  `langsmith.evaluation.aevaluate` use them: POST/GET /datasets (by name), GET /datasets/<id>, POST
  /examples/bulk, GET /examples (by dataset), POST /sessions (an experiment: a project with a
  reference_dataset_id), GET /sessions (by name or id), PATCH /sessions/<id>.
Runs are merged by id into `runs`; feedback into `feedback`; datasets, examples and experiments into
`datasets`, `examples` and `experiments`. `delay_s` makes every answer slow
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
        query = parse_qs(urlparse(self.path).query)
        if method == "GET" and path == "/sessions":  # projects are created by the first run that names them
            name = query.get("name", [""])[0]
            ids = query.get("id", [])
            with srv.lock:
                found = [e for e in srv.experiments.values() if e["name"] == name or e["id"] in ids]
                known = any(r.get("session_name") == name for r in srv.runs.values())
            self._answer(200, found or ([project(name)] if known else []))  # type: ignore[arg-type]
            return
        if self._datasets(method, path, query, raw):
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

    def _datasets(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> bool:
        """The dataset and experiment routes; False when the path is not one of them."""
        srv = self.server
        now = "2026-11-29T00:00:00+00:00"
        if method == "POST" and path == "/datasets":
            body = json.loads(raw)
            with srv.lock:
                if any(d["name"] == body["name"] for d in srv.datasets.values()):
                    self._answer(409, {"detail": "Dataset already exists"})
                    return True
                dataset = {"id": str(uuid.uuid4()), "name": body["name"], "description": body.get("description"),
                           "data_type": body.get("data_type") or "kv", "created_at": now, "modified_at": now,
                           "example_count": 0, "metadata": body.get("extra", {}).get("metadata")
                           if body.get("extra") else None, "tenant_id": TENANT}
                srv.datasets[dataset["id"]] = dataset
            self._answer(200, dataset)
            return True
        if method == "GET" and path == "/datasets":
            names, ids = query.get("name", []), query.get("id", [])
            with srv.lock:
                found = [d for d in srv.datasets.values() if (not names or d["name"] in names)
                         and (not ids or d["id"] in ids)]
            self._answer(200, found)
            return True
        if method == "GET" and path.startswith("/datasets/") and path.count("/") == 2:
            dataset = srv.datasets.get(path.rsplit("/", 1)[1])
            self._answer(200 if dataset else 404, dataset or {"detail": "Dataset not found"})
            return True
        if method == "POST" and path == "/examples/bulk":
            created = []
            with srv.lock:
                for item in json.loads(raw):
                    example = {"id": str(item.get("id") or uuid.uuid4()), "dataset_id": str(item["dataset_id"]),
                               "inputs": item.get("inputs"), "outputs": item.get("outputs"),
                               "metadata": item.get("metadata"), "created_at": now, "modified_at": now}
                    srv.examples[example["id"]] = example
                    srv.datasets[example["dataset_id"]]["example_count"] += 1
                    created.append(example)
            self._answer(200, created)
            return True
        if method == "GET" and path == "/examples":
            datasets = query.get("dataset", [])
            offset, limit = int(query.get("offset", ["0"])[0]), int(query.get("limit", ["100"])[0])
            with srv.lock:
                found = [e for e in srv.examples.values() if not datasets or e["dataset_id"] in datasets]
            self._answer(200, found[offset:offset + limit])
            return True
        if method == "POST" and path == "/sessions":
            body = json.loads(raw)
            experiment = {"id": str(body.get("id") or uuid.uuid4()), "name": body["name"], "tenant_id": TENANT,
                          "start_time": body.get("start_time") or now, "end_time": body.get("end_time"),
                          "description": body.get("description"), "extra": body.get("extra"),
                          "reference_dataset_id": body.get("reference_dataset_id")}
            with srv.lock:
                if any(e["name"] == experiment["name"] for e in srv.experiments.values()):
                    self._answer(409, {"detail": "Session already exists"})
                    return True
                srv.experiments[experiment["id"]] = experiment
            self._answer(200, experiment)
            return True
        if method == "PATCH" and path.startswith("/sessions/"):
            with srv.lock:
                experiment = srv.experiments.get(path.rsplit("/", 1)[1])
                if experiment is not None:
                    experiment.update({k: v for k, v in json.loads(raw).items() if v is not None})
            self._answer(200 if experiment else 404, experiment or {"detail": "Session not found"})
            return True
        return False

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
        self.datasets: dict[str, dict[str, Any]] = {}
        self.examples: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
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
