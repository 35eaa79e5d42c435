"""Local Markdown/text folders into the knowledge tables (`sixshop-agent ingest PATH`)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from persistence.knowledge import Chunk, Document, IngestReport, KnowledgeRepository

SUFFIXES = {".md", ".markdown", ".txt"}
MAX_CHUNK_CHARS = 1200
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
    if len(text) <= MAX_CHUNK_CHARS:
        return [text]
    pieces, current = [], ""
    for para in re.split(r"\n\s*\n", text):
        if current and len(current) + len(para) + 2 > MAX_CHUNK_CHARS:
            pieces.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        pieces.append(current)
    return pieces


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


def load_document(path: Path, root: Path, source: str, store_id: str | None) -> Document:
    raw = path.read_text(encoding="utf-8")
    meta, body = _front_matter(raw)
    heading = _HEADING.search(body)
    title = meta.get("title") or (heading.group(2).strip() if heading and len(heading.group(1)) == 1 else path.stem)
    return Document(
        doc_id=f"{source}:{path.relative_to(root).as_posix()}",
        title=title,
        url=meta.get("url") or None,
        store_id=meta.get("store_id") or store_id,
        source=source,
        content_hash=hashlib.sha256(f"{store_id}\n{raw}".encode()).hexdigest(),
        chunks=chunk_markdown(title, body),
    )


def load_folder(path: Path, source: str, store_id: str | None = None) -> list[Document]:
    path = path.resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
    root = path.parent if path.is_file() else path
    return [load_document(f, root, source, store_id) for f in files]


async def ingest_path(
    repo: KnowledgeRepository, path: Path, *, source: str | None = None, store_id: str | None = None,
    prune: bool = True,
) -> IngestReport:
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    source = source or f"files:{path.resolve().name}"
    return await repo.sync(source, load_folder(path, source, store_id), prune=prune)
