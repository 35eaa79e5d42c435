"""A small Pinecone index data plane on 127.0.0.1 for tests (REST API version 2025-04, pinecone 7).

What langchain-pinecone's PineconeVectorStore calls through the official client: POST /vectors/upsert,
POST /query (cosine similarity, metadata filters with $eq $ne $in $nin $exists $gt $gte $lt $lte
$and $or), POST /vectors/delete (by ids, by filter, or deleteAll), GET /vectors/fetch, and
POST /describe_index_stats. Namespaces are kept apart. Metadata values must be strings, numbers,
booleans or lists of strings, as the real service demands (a null is a 400), so the test sees what
we send. Requests are recorded with their Api-Key header redacted to a flag.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.local_http import JsonHandler, LocalServer

API_KEY = "pcsk_local_test_key"


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a)) or 1.0
    nb = math.sqrt(sum(y * y for y in b)) or 1.0
    return dot / (na * nb)


def _compare(op: str, present: bool, value: Any, arg: Any) -> bool:
    if op == "$exists":
        return present == bool(arg)
    if op in ("$ne", "$nin"):
        return not present or (value != arg if op == "$ne" else value not in arg)
    if not present:
        return False
    if op == "$eq":
        return bool(value == arg or (isinstance(value, list) and arg in value))
    if op == "$in":
        return value in arg
    return bool({"$gt": value > arg, "$gte": value >= arg, "$lt": value < arg, "$lte": value <= arg}[op])


def matches(metadata: dict[str, Any], flt: dict[str, Any] | None) -> bool:
    if not flt:
        return True
    for key, cond in flt.items():
        if key == "$and":
            if not all(matches(metadata, c) for c in cond):
                return False
            continue
        if key == "$or":
            if not any(matches(metadata, c) for c in cond):
                return False
            continue
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        if not all(_compare(op, key in metadata, metadata.get(key), arg) for op, arg in ops.items()):
            return False
    return True


def _valid_metadata(metadata: dict[str, Any]) -> str | None:
    for key, value in metadata.items():
        if isinstance(value, bool | int | float | str):
            continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            continue
        return f"Metadata value for field '{key}' must be a string, number, boolean or list of strings, got {value!r}"
    return None


class _Handler(JsonHandler):
    server: FakePineconeServer

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"code": {"400": 3, "401": 16, "404": 5}.get(str(status), 13), "message": message,
                            "details": [], "error": {"code": code, "message": message}})

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        srv = self.server
        with srv.lock:
            srv.requests.append({"method": method, "path": url.path, "body": body,
                                 "api_version": self.headers.get("X-Pinecone-API-Version"),
                                 "api_key_ok": self.headers.get("Api-Key") == API_KEY})
            if self.headers.get("Api-Key") != API_KEY:
                self._error(401, "UNAUTHENTICATED", "Invalid API Key")
                return
            ns = srv.namespaces.setdefault(str(body.get("namespace") or ""), {})
            if method == "POST" and url.path == "/vectors/upsert":
                for vec in body.get("vectors") or []:
                    problem = _valid_metadata(vec.get("metadata") or {})
                    if problem:
                        self._error(400, "INVALID_ARGUMENT", problem)
                        return
                    if len(vec["values"]) != srv.dimension:
                        self._error(400, "INVALID_ARGUMENT",
                                    f"Vector dimension {len(vec['values'])} does not match the dimension of the "
                                    f"index {srv.dimension}")
                        return
                for vec in body.get("vectors") or []:
                    ns[vec["id"]] = {"id": vec["id"], "values": vec["values"], "metadata": vec.get("metadata") or {}}
                self._json(200, {"upsertedCount": len(body.get("vectors") or [])})
                return
            if method == "POST" and url.path == "/query":
                query = body.get("vector") or []
                top_k = int(body.get("topK") or 10)
                kept = [v for v in ns.values() if matches(v["metadata"], body.get("filter"))]
                found = sorted(((_cosine(query, v["values"]), v) for v in kept), key=lambda pair: -pair[0])[:top_k]
                values, metadata = bool(body.get("includeValues")), bool(body.get("includeMetadata"))
                self._json(200, {
                    "results": [],
                    "matches": [{"id": v["id"], "score": score, "values": v["values"] if values else [],
                                 **({"metadata": v["metadata"]} if metadata else {})}
                                for score, v in found],
                    "namespace": str(body.get("namespace") or ""),
                    "usage": {"readUnits": 1 + len(found) // 10},
                })
                return
            if method == "POST" and url.path == "/vectors/delete":
                if body.get("deleteAll"):
                    ns.clear()
                elif body.get("ids") is not None:
                    for vid in body["ids"]:
                        ns.pop(vid, None)
                elif body.get("filter"):
                    for vid in [i for i, v in ns.items() if matches(v["metadata"], body["filter"])]:
                        ns.pop(vid)
                self._json(200, {})
                return
            if method == "GET" and url.path == "/vectors/fetch":
                q = parse_qs(url.query)
                space = srv.namespaces.get((q.get("namespace") or [""])[0], {})
                self._json(200, {"vectors": {i: space[i] for i in q.get("ids", []) if i in space},
                                 "namespace": (q.get("namespace") or [""])[0], "usage": {"readUnits": 1}})
                return
            if url.path == "/describe_index_stats":
                self._json(200, {"namespaces": {k: {"vectorCount": len(v)} for k, v in srv.namespaces.items() if v},
                                 "dimension": srv.dimension, "indexFullness": 0.0,
                                 "totalVectorCount": sum(len(v) for v in srv.namespaces.values()),
                                 "metric": "cosine", "vectorType": "dense"})
                return
            self._error(404, "NOT_FOUND", f"no route {method} {url.path}")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


class FakePineconeServer(LocalServer):
    def __init__(self, dimension: int) -> None:
        super().__init__(_Handler)
        self.dimension = dimension
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.namespaces: dict[str, dict[str, dict[str, Any]]] = {}

    @property
    def host(self) -> str:
        return self.origin

