"""Pages made from the code at build time (an MkDocs hook), so they cannot drift: the configuration page from the
settings class, the HTTP API's route table (with each route's owner rule) from the app itself.

Every field of `server.settings.Settings` becomes a row: the variable(s) it is read from, its default, and what
the comments above it (or beside it) in server/settings.py say. Fields are grouped under the section comment
that opens their group (`# models`, `# retrieval: ...`). docs/configuration.md holds the marker it replaces;
tests/test_docs.py checks every setting against env/.env.example and the built page.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path
from typing import Any

from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "server" / "settings.py"
MARKER = "<!-- settings-table -->"


def env_names(name: str, field: Any) -> list[str]:
    """The variables a field is read from, the first the documented one."""
    alias = field.validation_alias
    choices = [str(c) for c in getattr(alias, "choices", [])] if alias is not None else []
    names = [c.upper() for c in choices if c.upper() == c]  # the environment's names, not the field's own
    return names or [name.upper()]


def _comments() -> dict[int, str]:
    """line → the comment on it (its text without the #)."""
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(SOURCE.read_text(encoding="utf-8")).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


EXAMPLE = ROOT / "env" / ".env.example"
ASSIGNMENT = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=")


def example_lines() -> dict[str, str]:
    """variable → what env/.env.example says above it (the comment lines right above, none when it shares them)."""
    out: dict[str, str] = {}
    notes: list[str] = []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = ASSIGNMENT.match(line)
        if match:
            out.setdefault(match.group(1), " ".join(notes))
            notes = []
        elif line.startswith("#") and not line.startswith("# ---"):
            notes.append(line.lstrip("#").strip())
        else:
            notes = []
    return out


def documented_fields() -> list[tuple[str, str, str, str]]:
    """(group, the group's words, field name, description) for every annotated field of Settings, in source
    order; a field with no comment of its own in server/settings.py gets env/.env.example's."""
    lines = SOURCE.read_text(encoding="utf-8").splitlines()
    comments = _comments()
    tree = ast.parse("\n".join(lines))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    example = example_lines()
    out: list[tuple[str, str, str, str]] = []
    group, intro = "General", ""
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above: list[str] = []
        n = node.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        # a comment block after a blank line opens a group: its first words name it, the block is its introduction
        if above and n >= 1 and not lines[n - 1].strip():
            head = re.split(r"[:(]", above[0], maxsplit=1)[0].strip()
            group, intro = head[:1].upper() + head[1:], " ".join(above)
            above = []
        beside = comments.get(node.end_lineno or node.lineno, "")
        text = " ".join([*above, beside]).strip()
        name = node.target.id
        text = text or (Settings.model_fields[name].description or "")
        if not text:
            text = " ".join(example.get(v, "") for v in env_names(name, Settings.model_fields[name])).strip()
        out.append((group, intro, name, text))
    return out


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, Path):
        try:
            return str(value.relative_to(ROOT))
        except ValueError:
            return str(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "(built in)"
    return str(value) if value != "" else '""'


def settings_table() -> str:
    """The page's tables: one per group of settings."""
    fields = Settings.model_fields
    out: list[str] = []
    group = None
    for section, intro, name, text in documented_fields():
        if section != group:
            group = section
            out += ["", f"### {group}", ""] + ([intro, ""] if intro else []) + [
                "| variable | default | what it does |", "|---|---|---|"]
        names = env_names(name, fields[name])
        shown = "<br>".join(f"`{n}`" for n in names)
        out.append(f"| {shown} | `{_default(fields[name])}` | {text.replace('|', '&#124;')} |")
    return "\n".join(out).strip() + "\n"




ROUTES_MARKER = "<!-- routes-table -->"
PATH_PARAM = re.compile(r"\{(\w+):\w+\}")


def routes() -> list[tuple[str, str, str, str]]:
    """(methods, path, owner rule, what the handler's docstring says first) for every route of the app."""
    from server.http.access import rule_of
    from server.http.app import create_app

    out = []
    for route in create_app(Settings()).routes:
        for handler in getattr(route, "route_handlers", []):
            methods = sorted(m for m in getattr(handler, "http_methods", ()) if m not in ("OPTIONS", "HEAD"))
            if not methods:
                continue
            said = (handler.fn.__doc__ or "").strip().split("\n\n")[0]
            out.append((" ".join(methods), PATH_PARAM.sub(r"{\1}", route.path), rule_of(handler) or "none",
                        " ".join(said.split())))
    return sorted(out, key=lambda r: (r[1], r[0]))


def routes_table() -> str:
    from server.http.access import RULES

    out = ["| method | path | owner rule | what it does |", "|---|---|---|---|"]
    for methods, path, rule, said in routes():
        out.append(f"| {methods} | `{path}` | [{rule}](#rule-{rule}) | {said.replace('|', '&#124;')} |")
    out += ["", "| owner rule | credentials it takes |", "|---|---|"]
    for rule, taken in RULES.items():
        out.append(f'| <span id="rule-{rule}">{rule}</span> | {", ".join(sorted(taken))} |')
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, settings_table())
    if ROUTES_MARKER in markdown:
        markdown = markdown.replace(ROUTES_MARKER, routes_table())
    return markdown
