"""The docs: the site builds with `mkdocs build --strict` (a broken link or anchor, a page missing from the
navigation fails here, so `run.py test` fails), the configuration page shows every setting and env/.env.example
documents every one, the HTTP API page lists every route, the README stays short, no heading names an internal
issue number, the architecture diagrams name only modules that exist, and the runbooks only tests that exist."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


def generated() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generated", DOCS / "_hooks" / "generated.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_configuration_page_and_env_example_show_every_setting(site: Path) -> None:
    from server.settings import Settings

    hook = generated()
    page = (site / "configuration" / "index.html").read_text(encoding="utf-8")
    example = (ROOT / "env" / ".env.example").read_text(encoding="utf-8")
    documented = set(hook.example_lines())
    assert Settings.model_fields
    for name, field in Settings.model_fields.items():
        names = hook.env_names(name, field)
        assert f"<code>{names[0]}</code>" in page, f"{names[0]} is not on the configuration page"
        assert documented & set(names), f"env/.env.example does not document {names} ({name})"
    # and nothing in the example that the service does not read (a setting, or a variable read by name)
    read = {n for k, f in Settings.model_fields.items() for n in hook.env_names(k, f)}
    code = "".join(p.read_text(encoding="utf-8") for d in ("server", "graph", "persistence")
                   for p in (ROOT / d).rglob("*.py"))
    for variable in documented:
        assert variable in read or f'"{variable}"' in code, f"env/.env.example documents {variable}; nothing reads it"
    assert "APP_ENV=" in example


def test_the_http_api_page_lists_every_route_with_its_owner_rule(site: Path) -> None:
    page = (site / "http-api" / "index.html").read_text(encoding="utf-8")
    routes = generated().routes()
    assert len(routes) > 40
    for methods, path, rule, _ in routes:
        assert rule != "none", f"{methods} {path} has no owner rule"
        assert f"<code>{path}</code>" in page.replace("&amp;", "&"), path


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    assert readme.startswith("# sixshop-ai-agent\n\n```bash\npython3 run.py serve")  # the two commands come first
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert local, "the README points to the docs"
    for link in local:
        assert (ROOT / link).exists(), link


def headings(path: Path) -> list[str]:
    out, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.append(line)
    return out


@pytest.mark.parametrize("path", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_heading_names_an_internal_issue_number(path: Path) -> None:
    numbered = re.compile(r"(\bissues?\s*#?\s*\d+|#\d+\b)", re.IGNORECASE)
    assert [h for h in headings(path) if numbered.search(h.lstrip("#"))] == []


def test_the_check_for_issue_numbers_sees_one(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Title\n\n```\n# issue 12 in a code block is fine\n```\n\n## What issue 29 built\n")
    assert headings(page) == ["# Title", "## What issue 29 built"]


def mermaid_blocks() -> list[str]:
    blocks = []
    for page in PAGES:
        blocks += re.findall(r"```mermaid\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
    return blocks


def test_the_architecture_diagrams_name_only_modules_that_exist() -> None:
    blocks = mermaid_blocks()
    assert len(blocks) >= 2
    named = {m for block in blocks for m in re.findall(r"[\w./]+\.(?:py|sql)\b", block)}
    assert len(named) >= 15
    assert sorted(m for m in named if not (ROOT / m).is_file()) == []
    # the turn's parts are all on it, so a part added or renamed shows up here
    parts = {f"server/services/turns/{p.name}" for p in (ROOT / "server/services/turns").glob("*.py")
             if p.name != "__init__.py"}
    assert parts - named == set()


def test_every_runbook_names_tests_that_exist() -> None:
    page = (DOCS / "operations.md").read_text(encoding="utf-8")
    runbooks = page.split("## Runbooks", 1)[1].split("\n### ")[1:]
    assert len(runbooks) >= 6
    for runbook in runbooks:
        named = re.findall(r"`(tests/\w+\.py)::(test_\w+)`", runbook)
        assert named, f"the runbook {runbook.splitlines()[0]!r} names no test"
        for module, test in named:
            assert re.search(rf"^(async )?def {test}\(", (ROOT / module).read_text(encoding="utf-8"), re.MULTILINE), \
                f"{module}::{test}"


def test_every_screenshot_is_shown_somewhere() -> None:
    """`python3 run.py screenshots` redraws docs/screenshots/ from the browser tests; each picture is on a page."""
    text = "".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *PAGES])
    shots = sorted((DOCS / "screenshots").glob("*.png"))
    assert shots
    assert [s.name for s in shots if f"screenshots/{s.name}" not in text] == []
