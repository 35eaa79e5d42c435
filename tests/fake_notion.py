"""A small Notion API server on 127.0.0.1 for tests (API version 2025-09-03, what notion-client 3 calls).

Endpoints: GET /v1/databases/{id} (with its `data_sources`), POST /v1/data_sources/{id}/query
(pages, `start_cursor` / `next_cursor` / `has_more`), GET /v1/blocks/{id}/children (blocks with
`has_children`, paginated the same way). Error bodies are Notion's: {"object": "error", "status",
"code", "message"}. Pagination is capped at `max_page_size` so small fixtures still paginate.

Faults, chosen by the test: `rate_limit_once` (paths answered once with 429 + Retry-After: 1),
`fail_once` (paths answered once with 503), `fail_always` (paths always answered with 500).
Requests are recorded (method, path, query, body, Notion-Version) without the token.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.local_http import JsonHandler, LocalServer

TOKEN = "ntn_local_test_token"


def rich(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"content": text, "link": None}, "annotations": {}, "plain_text": text,
             "href": None}]


def block(kind: str, text: str = "", children: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """A block as the API returns it; `children` are served from /blocks/{id}/children."""
    body: dict[str, Any] = {"rich_text": rich(text), "color": "default", **extra}
    if kind == "table_row":
        body = {"cells": [rich(cell) for cell in extra["cells"]]}
    elif kind == "table":
        body = {"table_width": extra.get("table_width", 2), "has_column_header": extra.get("has_column_header", True),
                "has_row_header": False}
    elif kind == "divider":
        body = {}
    return {"object": "block", "id": str(uuid.uuid4()), "type": kind, "has_children": bool(children),
            "archived": False, "in_trash": False, kind: body, "_children": children or []}


class NotionWorkspace:
    """The server's data: one database with one data source, pages with block trees."""

    def __init__(self) -> None:
        self.database_id = str(uuid.uuid4())
        self.data_source_id = str(uuid.uuid4())
        self.pages: dict[str, dict[str, Any]] = {}
        self.blocks: dict[str, list[dict[str, Any]]] = {}  # parent id -> children
        self._clock = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)

    def _tick(self) -> str:
        self._clock += timedelta(minutes=1)  # Notion rounds last_edited_time to the minute
        return self._clock.strftime("%Y-%m-%dT%H:%M:00.000Z")

    def _store_blocks(self, parent: str, children: list[dict[str, Any]]) -> None:
        self.blocks[parent] = [{k: v for k, v in b.items() if k != "_children"} for b in children]
        for child in children:
            if child["_children"]:
                self._store_blocks(child["id"], child["_children"])

    def add_page(self, title: str, blocks: list[dict[str, Any]], *, store: str | None = None) -> str:
        page_id = str(uuid.uuid4())
        now = self._tick()
        props: dict[str, Any] = {"Name": {"id": "title", "type": "title", "title": rich(title)}}
        props["Store"] = {"id": "st0r", "type": "select",
                          "select": {"id": "x", "name": store, "color": "default"} if store else None}
        self.pages[page_id] = {
            "object": "page", "id": page_id, "created_time": now, "last_edited_time": now,
            "archived": False, "in_trash": False, "is_locked": False,
            "url": f"https://www.notion.so/{title.replace(' ', '-')}-{page_id.replace('-', '')}",
            "public_url": None,
            "parent": {"type": "data_source_id", "data_source_id": self.data_source_id,
                       "database_id": self.database_id},
            "properties": props,
        }
        self._store_blocks(page_id, blocks)
        return page_id

    def edit_page(self, page_id: str, blocks: list[dict[str, Any]]) -> None:
        self._store_blocks(page_id, blocks)
        self.pages[page_id]["last_edited_time"] = self._tick()

    def archive_page(self, page_id: str) -> None:
        self.pages[page_id]["archived"] = self.pages[page_id]["in_trash"] = True
        self.pages[page_id]["last_edited_time"] = self._tick()


class _Handler(JsonHandler):
    server: FakeNotionServer

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"object": "error", "status": status, "code": code, "message": message,
                            "request_id": str(uuid.uuid4())}, headers)

    def _page_of(self, items: list[dict[str, Any]], cursor: str | None, size: int) -> dict[str, Any]:
        start = int(cursor) if cursor else 0
        size = max(1, min(size, self.server.max_page_size))
        chunk = items[start:start + size]
        more = start + size < len(items)
        return {"object": "list", "results": chunk, "next_cursor": str(start + size) if more else None,
                "has_more": more}

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        srv = self.server
        with srv.lock:
            srv.requests.append({"method": method, "path": url.path, "query": query, "body": body,
                                 "notion_version": self.headers.get("Notion-Version")})
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._error(401, "unauthorized", "API token is invalid.")
                return
            if url.path in srv.rate_limit_once:
                srv.rate_limit_once.discard(url.path)
                self._error(429, "rate_limited", "You have been rate limited.", {"Retry-After": "1"})
                return
            if url.path in srv.fail_once:
                srv.fail_once.discard(url.path)
                self._error(503, "service_unavailable", "Notion is unavailable.")
                return
            if url.path in srv.fail_always:
                self._error(500, "internal_server_error", "Unexpected error.")
                return
            ws = srv.workspace
            parts = url.path.strip("/").split("/")
            if method == "GET" and parts[:2] == ["v1", "databases"] and len(parts) == 3:
                if parts[2] != ws.database_id:
                    self._error(404, "object_not_found", "Could not find database.")
                    return
                self._json(200, {"object": "database", "id": ws.database_id, "title": rich("Help centre"),
                                 "data_sources": [{"id": ws.data_source_id, "name": "Help centre"}]})
                return
            if method == "POST" and parts[:2] == ["v1", "data_sources"] and parts[3:] == ["query"]:
                if parts[2] != ws.data_source_id:
                    self._error(404, "object_not_found", "Could not find data source.")
                    return
                live = [p for p in ws.pages.values() if not p["in_trash"]]  # the API leaves trashed pages out
                result = self._page_of(live, body.get("start_cursor"), int(body.get("page_size") or 100))
                self._json(200, {**result, "type": "page_or_data_source", "page_or_data_source": {}})
                return
            if method == "GET" and parts[:2] == ["v1", "blocks"] and parts[3:] == ["children"]:
                if parts[2] not in ws.blocks:
                    self._error(404, "object_not_found", "Could not find block.")
                    return
                result = self._page_of(ws.blocks[parts[2]], query.get("start_cursor"),
                                       int(query.get("page_size") or 100))
                self._json(200, {**result, "type": "block", "block": {}})
                return
            self._error(400, "invalid_request_url", "Invalid request URL.")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


class FakeNotionServer(LocalServer):
    def __init__(self, workspace: NotionWorkspace | None = None, max_page_size: int = 2) -> None:
        super().__init__(_Handler)
        self.workspace = workspace or NotionWorkspace()
        self.max_page_size = max_page_size
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.rate_limit_once: set[str] = set()
        self.fail_once: set[str] = set()
        self.fail_always: set[str] = set()

    @property
    def base_url(self) -> str:
        return self.origin

