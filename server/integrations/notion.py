"""A Notion database into the knowledge index (`sixshop-agent ingest notion`).

With the official `notion-client` (API version 2025-09-03): the database's data sources are found
with `databases.retrieve`, every page is listed with `data_sources.query` (following `next_cursor`),
and a page's blocks are read with `blocks.children.list`, recursively for blocks with children.
Blocks become Markdown (headings, lists, to-dos, toggles, quotes, callouts, code, tables, ...), which
the shared chunker splits, keeping the page title and URL on every chunk.

Incremental: a page is re-read only when its `last_edited_time` (or its store) changed since the
last run; pages no longer listed (deleted, archived, in trash) are removed from the index. HTTP 429
is retried by the client after Retry-After, GET 5xx with back-off by the client, and 5xx on the
(read-only) query POST by us. A page that still fails is reported and skipped; if the listing
itself fails the run stops before removing anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from notion_client import AsyncClient
from notion_client.client import ClientOptions, RetryOptions
from notion_client.errors import HTTPResponseError

from persistence.knowledge import AUDIENCES, IngestReport, KnowledgeDocument, KnowledgeIndexer
from server.integrations.ingest import chunk_markdown
from server.integrations.progress import LogProgress, Progress

log = logging.getLogger(__name__)

PAGE_SIZE = 100
QUERY_RETRIES = 4


@dataclass(frozen=True)
class NotionPage:
    id: str
    title: str
    url: str | None
    last_edited_time: str
    store_id: str | None
    archived: bool
    audience: str = "all"  # the page's audience property, lower-cased (checked when the page is indexed)

    @property
    def doc_id(self) -> str:
        return f"notion:{self.id}"

    @property
    def version(self) -> str:
        return f"{self.last_edited_time}|{self.store_id or ''}|{self.audience}"


def plain_text(rich_text: list[dict[str, Any]] | None) -> str:
    return "".join(str(part.get("plain_text") or "") for part in rich_text or [])


def _property_text(prop: dict[str, Any] | None) -> str | None:
    if not prop:
        return None
    kind = prop.get("type")
    value = prop.get(kind) if kind else None
    if kind in ("title", "rich_text"):
        text = plain_text(value)
    elif kind == "select" or kind == "status":
        text = (value or {}).get("name") or ""
    elif kind in ("number", "email", "phone_number", "url"):
        text = "" if value is None else str(value)
    else:
        return None
    return text.strip() or None


def parse_page(page: dict[str, Any], store_property: str, audience_property: str = "Audience") -> NotionPage:
    props: dict[str, Any] = page.get("properties") or {}
    title_prop = next((p for p in props.values() if p.get("type") == "title"), None)
    return NotionPage(
        id=str(page["id"]),
        title=_property_text(title_prop) or "Untitled",
        url=page.get("public_url") or page.get("url"),
        last_edited_time=str(page.get("last_edited_time") or ""),
        store_id=_property_text(props.get(store_property)),
        archived=bool(page.get("archived") or page.get("in_trash") or page.get("is_archived")),
        audience=(_property_text(props.get(audience_property)) or "all").lower(),
    )


def _block_text(block: dict[str, Any]) -> str:
    body = block.get(block.get("type", "")) or {}
    return plain_text(body.get("rich_text") or body.get("caption"))


def blocks_to_markdown(blocks: list[dict[str, Any]], depth: int = 0) -> str:
    """Markdown for a block tree (children under `_children`, as `NotionReader.blocks` returns)."""
    lines: list[str] = []
    indent = "  " * depth
    number = 0
    for block in blocks:
        kind = block.get("type", "")
        body = block.get(kind) or {}
        text = _block_text(block)
        children: list[dict[str, Any]] = block.get("_children") or []
        number = number + 1 if kind == "numbered_list_item" else 0
        nested_depth = depth
        if kind in ("heading_1", "heading_2", "heading_3"):
            # the page title is the document's level-1 heading: page headings are its sections
            level = {"heading_1": "##", "heading_2": "###", "heading_3": "###"}[kind]
            lines.append(f"\n{level} {text}\n")
        elif kind == "bulleted_list_item":
            lines.append(f"{indent}- {text}")
            nested_depth = depth + 1
        elif kind == "numbered_list_item":
            lines.append(f"{indent}{number}. {text}")
            nested_depth = depth + 1
        elif kind == "to_do":
            lines.append(f"{indent}- [{'x' if body.get('checked') else ' '}] {text}")
            nested_depth = depth + 1
        elif kind == "toggle":
            lines.append(f"{indent}{text}")
            nested_depth = depth + 1
        elif kind == "quote":
            lines.append(f"{indent}> {text}")
        elif kind == "callout":
            icon = (body.get("icon") or {}).get("emoji") or ""
            lines.append(f"{indent}{(icon + ' ') if icon else ''}{text}")
        elif kind == "code":
            lines.append(f"```{body.get('language') or ''}\n{text}\n```")
        elif kind == "equation":
            lines.append(f"{indent}{body.get('expression') or ''}")
        elif kind == "table":
            rows = [[plain_text(cell) for cell in (row.get("table_row") or {}).get("cells", [])]
                    for row in children if row.get("type") == "table_row"]
            for i, cells in enumerate(rows):
                lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
                if i == 0 and body.get("has_column_header"):
                    lines.append("|" + " --- |" * len(cells))
            lines.append("")
            continue  # rows done here
        elif kind in ("bookmark", "embed", "link_preview"):
            url = body.get("url") or ""
            lines.append(f"{indent}{text} {url}".rstrip())
        elif kind == "child_page":
            lines.append(f"{indent}{body.get('title') or ''}")
        elif kind in ("image", "file", "pdf", "video", "audio"):
            if text:
                lines.append(f"{indent}{text}")
        elif kind == "divider":
            lines.append("")
        elif text:  # paragraph and anything else with rich text
            lines.append(f"{indent}{text}")
        elif kind == "paragraph":
            lines.append("")
        if children:
            lines.append(blocks_to_markdown(children, nested_depth))
    return "\n".join(lines)


def page_document(page: NotionPage, blocks: list[dict[str, Any]], source: str) -> KnowledgeDocument:
    if page.audience not in AUDIENCES:  # a misspelt seller page must not reach shoppers as `all`
        raise ValueError(f"audience {page.audience!r} is not one of {', '.join(AUDIENCES)}")
    body = blocks_to_markdown(blocks)
    return KnowledgeDocument(
        doc_id=page.doc_id, title=page.title, url=page.url, store_id=page.store_id, source=source,
        version=page.version, chunks=chunk_markdown(page.title, body), audience=page.audience,
    )


def make_client(token: str, *, base_url: str | None = None, retry_delay_ms: int = 1000) -> AsyncClient:
    options = ClientOptions(
        auth=token,
        retry=RetryOptions(max_retries=5, initial_retry_delay_ms=retry_delay_ms, max_retry_delay_ms=60_000),
        # the client logs a warning per retry; the token is only ever in a header it does not log
        logger=logging.getLogger("notion_client"),
    )
    if base_url:
        options.base_url = base_url
    return AsyncClient(options=options)


class NotionReader:
    def __init__(self, client: AsyncClient, database_id: str, *, store_property: str = "Store",
                 audience_property: str = "Audience", retry_delay_s: float = 1.0) -> None:
        self.client = client
        self.database_id = database_id
        self.store_property = store_property
        self.audience_property = audience_property
        self.retry_delay_s = retry_delay_s

    async def _query(self, data_source_id: str, cursor: str | None) -> dict[str, Any]:
        """The query is a POST, which the client does not retry on 5xx; it only reads, so we do."""
        for attempt in range(QUERY_RETRIES + 1):
            try:
                kwargs: dict[str, Any] = {"page_size": PAGE_SIZE}
                if cursor:
                    kwargs["start_cursor"] = cursor
                result: dict[str, Any] = await self.client.data_sources.query(data_source_id, **kwargs)
                return result
            except HTTPResponseError as exc:
                if exc.status < 500 or attempt == QUERY_RETRIES:
                    raise
                delay = self.retry_delay_s * 2**attempt
                log.warning("notion query got HTTP %s; retrying in %.1f s", exc.status, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def data_source_ids(self) -> list[str]:
        database: dict[str, Any] = await self.client.databases.retrieve(self.database_id)
        ids = [str(ds["id"]) for ds in database.get("data_sources") or []]
        if not ids:
            raise RuntimeError(f"Notion database {self.database_id} has no data source the integration can read")
        return ids

    async def pages(self) -> AsyncIterator[NotionPage]:
        for data_source_id in await self.data_source_ids():
            cursor: str | None = None
            while True:
                result = await self._query(data_source_id, cursor)
                for page in result.get("results") or []:
                    if page.get("object") == "page":
                        yield parse_page(page, self.store_property, self.audience_property)
                if not result.get("has_more") or not result.get("next_cursor"):
                    break
                cursor = str(result["next_cursor"])

    async def blocks(self, block_id: str) -> list[dict[str, Any]]:
        """All children of a block (or page), each with its own children under `_children`."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            kwargs: dict[str, Any] = {"page_size": PAGE_SIZE}
            if cursor:
                kwargs["start_cursor"] = cursor
            result: dict[str, Any] = await self.client.blocks.children.list(block_id, **kwargs)
            out.extend(result.get("results") or [])
            if not result.get("has_more") or not result.get("next_cursor"):
                break
            cursor = str(result["next_cursor"])
        for block in out:
            # child pages and databases are their own documents, not part of this page's text
            if block.get("has_children") and block.get("type") not in ("child_page", "child_database"):
                block["_children"] = await self.blocks(str(block["id"]))
        return out


async def ingest_notion(
    indexer: KnowledgeIndexer,
    reader: NotionReader,
    *,
    progress: Progress | None = None,
    concurrency: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> IngestReport:
    """Bring the index up to date with the Notion database; returns what changed."""
    started = clock()
    progress = progress or LogProgress()
    source = f"notion:{reader.database_id}"
    report = IngestReport()
    known = await indexer.repo.fingerprints(source)
    listed = [page async for page in reader.pages()]  # a failure here stops the run: nothing is removed
    live = [page for page in listed if not page.archived]
    gate = asyncio.Semaphore(max(1, concurrency))
    progress.start(len(live))

    async def one(page: NotionPage) -> None:
        if await indexer.is_current(page.doc_id, page.version, known):
            report.unchanged += 1
            progress.advance(page.title, "unchanged")
            return
        try:
            async with gate:
                blocks = await reader.blocks(page.id)
                report.chunks += await indexer.write(page_document(page, blocks, source))
        except Exception as exc:  # one page must not stop the others
            report.failed += 1
            reason = type(exc).__name__
            if isinstance(exc, HTTPResponseError):
                reason = f"HTTP {exc.status} {getattr(exc.code, 'value', exc.code)}"
            report.failures.append((page.doc_id, reason))
            log.warning("notion page %s (%s) failed: %s", page.id, page.title, reason)
            progress.advance(page.title, "failed")
            return
        if page.doc_id in known:
            report.updated += 1
            progress.advance(page.title, "updated")
        else:
            report.added += 1
            progress.advance(page.title, "added")

    try:
        await asyncio.gather(*(one(page) for page in live))
    finally:
        progress.stop()
    gone = sorted(set(known) - {page.doc_id for page in live})
    report.deleted = await indexer.remove(gone)
    report.seconds = clock() - started
    return report
