"""Prompt texts, versioned: a variant name is stored on each assistant message."""

from __future__ import annotations

from html import escape

from graph.retrieval import Passage

DEFAULT_VARIANT = "v1"

SYSTEM_PROMPTS: dict[str, str] = {
    "v1": (
        "You are the customer-support assistant of an online store. Answer the shopper's question "
        "using only the help-centre passages below. If they do not contain the answer, say so "
        "plainly and suggest contacting the store. Answer in the language the shopper wrote in "
        "(Korean or English), briefly and politely. Do not invent policies, prices or dates.\n\n"
        "Passages:\n{passages}"
    ),
}

NO_PASSAGES = "(no passage matched the question)"


def _url(p: Passage) -> str:
    return f' url="{escape(p.url)}"' if p.url else ""


def format_passages(passages: list[Passage]) -> str:
    if not passages:
        return NO_PASSAGES
    return "\n".join(
        f'<passage id="{escape(p.id)}" title="{escape(p.title)}"{_url(p)}>\n{p.content}\n</passage>'
        for p in passages
    )


def system_prompt(passages: list[Passage], variant: str = DEFAULT_VARIANT) -> str:
    template = SYSTEM_PROMPTS.get(variant, SYSTEM_PROMPTS[DEFAULT_VARIANT])
    return template.format(passages=format_passages(passages))
