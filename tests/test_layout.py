"""The direction of dependencies (ARCHITECTURE.md "Layout"), checked on the source and on a live import.

graph/ is the LangGraph layer that Studio loads alone: it imports nothing from server/ or persistence/.
persistence/ imports nothing from server/. Inside server/, routes (http/) call services, never the
reverse: services/ and integrations/ import nothing from server.http.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (absolute names)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    base = ROOT / package
    for path in [base] if base.is_file() else sorted(base.rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(ROOT)} imports {module}")
    return out


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("graph", ("server", "persistence")),
        ("persistence", ("server",)),
        ("server/services", ("server.http",)),
        ("server/integrations", ("server.http",)),
    ],
)
def test_layers_import_only_downwards(package: str, forbidden: tuple[str, ...]) -> None:
    assert violations(package, forbidden) == []


# the turn's parts (server/services/turns/): running knows nothing of how a turn was admitted nor of HTTP; the event
# log, which every reader follows, holds no database code; setup and finishing, which running uses, no admission
DATABASE_CODE = ("persistence", "psycopg", "psycopg_pool", "langgraph.checkpoint")
TURN_RULES = [
    ("server/services/turns/running.py", ("server.services.turns.admission", "server.services.turns.relay",
                                          "server.services.turns.leases", "server.http", "litestar")),
    ("server/services/turns/finishing.py", ("server.services.turns.admission", "server.services.turns.running",
                                            "server.http", "litestar")),
    ("server/services/turns/setup.py", ("server.services.turns.admission", "server.services.turns.running",
                                        "server.http", "litestar")),
    ("server/services/turns/events.py", (*DATABASE_CODE, "server.services.turns.admission",
                                         "server.services.turns.running", "server.http", "litestar")),
]


@pytest.mark.parametrize(("module", "forbidden"), TURN_RULES, ids=[m for m, _ in TURN_RULES])
def test_each_part_of_a_turn_imports_only_what_its_job_needs(module: str, forbidden: tuple[str, ...]) -> None:
    assert violations(module, forbidden) == []


def test_every_part_of_a_turn_has_a_rule_and_the_service_is_a_thin_composition() -> None:
    parts = {p.name for p in (ROOT / "server/services/turns").glob("*.py")} - {"__init__.py"}
    ruled = {Path(m).name for m, _ in TURN_RULES}
    # admission, relay and leases may use the others: they are the parts that compose the rest
    assert parts - ruled == {"admission.py", "relay.py", "leases.py"}
    for path in (ROOT / "server/services/turns").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 300, f"{path.name}: a part holds one job, a few hundred lines"
    service = ROOT / "server/services/chat.py"
    assert len(service.read_text().splitlines()) <= 150
    assert not [m for m in imported_modules(service) if m.startswith(("psycopg", "langgraph.checkpoint"))]


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from server.integrations.studio import make_graph\n")
    assert "server.integrations.studio" in imported_modules(sample)


def test_loading_the_graph_package_loads_nothing_of_the_service() -> None:
    modules = sorted(p.stem for p in (ROOT / "graph").glob("*.py") if p.stem != "__init__")
    code = (f"import sys\nfor m in {modules!r}: __import__('graph.' + m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('server', 'persistence')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_langgraph_json_points_at_the_studio_entry_point_in_the_server_layer() -> None:
    config = json.loads((ROOT / "langgraph.json").read_text())
    target = config["graphs"]["agent"]
    path, _, name = target.partition(":")
    assert (ROOT / path).is_file() and path.startswith("./server/"), target
    assert f"def {name}(" in (ROOT / path).read_text()


def test_the_agent_protocol_door_is_split_by_resource_and_frames_are_made_in_one_place() -> None:
    package = ROOT / "server/http/agent_protocol"
    modules = {p.stem for p in package.glob("*.py")}
    assert {"threads", "runs", "streams", "assistants", "run_stream"} <= modules
    for path in package.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name
        # a run's events become LangGraph's frames only in run_stream.py, whichever route streams them
        if path.stem != "run_stream":
            assert "server.schemas.sse_frame" not in imported_modules(path), path.name


def test_the_benches_start_postgresql_and_our_server_one_way() -> None:
    """bench/_throwaway.py is the one place a bench gets a throwaway PostgreSQL (and the help centre in it), and
    bench.run.serve_ours the one place our server is started for a bench, bench/run.py's own included."""
    for path in sorted((ROOT / "bench").glob("*.py")):
        if path.name != "_throwaway.py":
            assert "persistence.embedded.start_embedded" not in imported_modules(path), path.name
    run = (ROOT / "bench" / "run.py").read_text(encoding="utf-8")
    assert run.count("server_command(") == 2, "server_command is defined and called by serve_ours only"
    assert "serve_ours(conninfo" in run
