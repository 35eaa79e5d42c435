"""Local Markdown/text folders into the knowledge index (`sixshop-agent ingest PATH`), and the
chunker every source shares (Notion pages are turned into the same Markdown first)."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

from langchain_text_splitters import RecursiveCharacterTextSplitter

from persistence.knowledge import AUDIENCES, Chunk, IngestReport, KnowledgeDocument, KnowledgeIndexer, SyncProgress

SUFFIXES = {".md", ".markdown", ".txt"}
MAX_CHUNK_CHARS = 1200
CHUNK_OVERLAP = 120
_SPLITTER = RecursiveCharacterTextSplitter(
    chunk_size=MAX_CHUNK_CHARS, chunk_overlap=CHUNK_OVERLAP,
    separators=["\n\n", "\n", ". ", "다. ", "? ", "! ", " ", ""], keep_separator="end",
)
_FRONT = re.compile(r"\A---\n(.*?)\n---\n", re.S)
_HEADING = re.compile(r"^(#{1,3})\s+(.+?)\s*#*$", re.M)


def _front_matter(text: str) -> tuple[dict[str, str], str]:
    m = _FRONT.match(text)
    if not m:
        return {}, text
    meta: dict[str, str] = {}
    for line in m.group(1).splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            meta[key.strip().lower()] = value.strip().strip('"')
    return meta, text[m.end():]


def _split_long(text: str) -> list[str]:
    """Sections longer than MAX_CHUNK_CHARS split on paragraphs, then lines, then sentences."""
    if len(text) <= MAX_CHUNK_CHARS:
        return [text]
    return _SPLITTER.split_text(text)


def chunk_markdown(title: str, body: str) -> list[Chunk]:
    """One chunk per section (## heading), long sections split on paragraphs; titles keep the path."""
    chunks: list[Chunk] = []
    sections: list[tuple[str, str]] = []
    last_heading, last_end = title, 0
    for m in _HEADING.finditer(body):
        sections.append((last_heading, body[last_end:m.start()]))
        level, heading = len(m.group(1)), m.group(2).strip()
        last_heading = title if level == 1 else f"{title} › {heading}"
        last_end = m.end()
    sections.append((last_heading, body[last_end:]))
    for heading, text in sections:
        text = text.strip()
        if text:
            chunks.extend(Chunk(title=heading, content=piece.strip()) for piece in _split_long(text))
    return chunks


def load_document(path: Path, root: Path, source: str, store_id: str | None) -> KnowledgeDocument:
    raw = path.read_text(encoding="utf-8")
    meta, body = _front_matter(raw)
    heading = _HEADING.search(body)
    title = meta.get("title") or (heading.group(2).strip() if heading and len(heading.group(1)) == 1 else path.stem)
    audience = (meta.get("audience") or "all").lower()
    if audience not in AUDIENCES:
        raise ValueError(f"{path}: audience must be one of {', '.join(AUDIENCES)}, not {audience!r}")
    return KnowledgeDocument(
        doc_id=f"{source}:{path.relative_to(root).as_posix()}",
        title=title,
        url=meta.get("url") or None,
        store_id=meta.get("store_id") or store_id,
        source=source,
        version=hashlib.sha256(f"{store_id}\n{raw}".encode()).hexdigest(),
        chunks=chunk_markdown(title, body),
        audience=audience,
    )


def load_folder(path: Path, source: str, store_id: str | None = None) -> list[KnowledgeDocument]:
    path = path.resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
    root = path.parent if path.is_file() else path
    return [load_document(f, root, source, store_id) for f in files]


async def ingest_path(
    indexer: KnowledgeIndexer, path: Path, *, source: str | None = None, store_id: str | None = None,
    prune: bool = True, progress: SyncProgress | None = None,
) -> IngestReport:
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    started = time.perf_counter()
    source = source or f"files:{path.resolve().name}"
    report = await indexer.sync(source, load_folder(path, source, store_id), prune=prune, progress=progress)
    report.seconds = time.perf_counter() - started
    return report
