"""The retriever interface the graph uses; implementations live outside graph/."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    url: str | None
    score: float
    content: str

    def as_source(self, snippet_chars: int = 240) -> dict[str, Any]:
        """The API's Source shape: {id, title, url, score, snippet}."""
        text = " ".join(self.content.split())
        snippet = text if len(text) <= snippet_chars else text[: snippet_chars - 1].rstrip() + "…"
        return {"id": self.id, "title": self.title, "url": self.url, "score": round(self.score, 6),
                "snippet": snippet}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Retriever(Protocol):
    async def search(self, query: str, *, store_id: str | None, k: int) -> list[Passage]: ...
