#!/usr/bin/env python3
"""Bootstrap: the README's two commands, with nothing but Python 3.11+ on the machine.

    python3 run.py serve     # venv + pinned install, then the service on :8000 (embedded PostgreSQL)
    python3 run.py test      # venv + pinned install, then ruff, mypy and the whole pytest suite (which builds the
                             # docs site with `mkdocs build --strict`: tests/test_docs.py)

and for the docs:

    python3 run.py docs         # the docs site (docs/, mkdocs.yml) on http://127.0.0.1:8001, rebuilt on save
    python3 run.py screenshots  # every picture in docs/screenshots/ redrawn from the current build (Chromium)

The venv lives in .venv/ and is re-installed only when pyproject.toml or constraints.txt change, or the checkout
moves (their hash and its path are stamped in the venv), so the second run starts at once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SIXSHOP_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".sixshop-install-stamp"


def _stamp_value() -> str:
    # the checkout too: a venv shared through SIXSHOP_VENV with another clone had its editable install pointing
    # there, and `sixshop-agent` ran that clone's code
    digest = hashlib.sha256(str(ROOT).encode())
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Python 3.11+ is required, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"[run.py] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    want = _stamp_value()
    if STAMP.exists() and STAMP.read_text().strip() == want:
        return
    print("[run.py] installing pinned dependencies (constraints.txt)", flush=True)
    pip = [str(PY), "-m", "pip", "--disable-pip-version-check", "-q"]
    pinned = ["-c", str(ROOT / "constraints.txt")]
    # pip and the build backend are pinned too, and the project is built with the venv's own setuptools: an
    # isolated build would fetch whatever setuptools is newest on the day
    subprocess.run([*pip, "install", *pinned, "pip", "setuptools"], check=True)
    subprocess.run([*pip, "install", *pinned, "--no-build-isolation", "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(want)


def _run(cmd: list[str]) -> int:
    print("[run.py] $ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def cmd_test(args: list[str]) -> int:
    for check in (
        [str(PY), "-m", "ruff", "check", "."],
        [str(PY), "-m", "mypy"],
    ):
        rc = _run(check)
        if rc != 0:
            return rc
    rc = _run([str(PY), "-m", "pytest", *args])
    if rc == 5:
        print("[run.py] pytest collected no tests: that is a failure", flush=True)
    if rc != 0 or args:  # a run narrowed by arguments is a developer's: no second leg
        return rc
    return pg15_leg()


PG15_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15: the seed's RDS version
PG15_TESTS = ["tests/test_db.py", "tests/test_turns.py", "tests/test_lifecycle.py", "tests/test_stats.py",
              "tests/test_jobs.py", "tests/test_checkpointer_conformance.py", "tests/test_langchain_standard.py"]


def pg15_leg() -> int:
    """The database tests again on PostgreSQL 15 (what RDS runs for the seed). Debian has no pgvector for it,
    so the vector tests skip there, each saying why."""
    if not (PG15_BIN / "postgres").exists():
        print(f"[run.py] PostgreSQL 15 leg skipped: no {PG15_BIN}/postgres (apt-get install postgresql-15)",
              flush=True)
        return 1 if os.environ.get("CI") else 0  # in CI a missing install step must not pass unseen
    print("[run.py] PostgreSQL 15 leg: migrations, triggers, turns, lifecycle, stats, jobs, checkpointer "
          "conformance (vector tests skip: no pgvector package for 15)", flush=True)
    os.environ["TEST_PG_BIN"] = str(PG15_BIN)
    rc = _run([str(PY), "-m", "pytest", *PG15_TESTS])
    if rc == 5:
        print("[run.py] pytest collected no tests: that is a failure", flush=True)
    return rc


SCREENSHOT_TESTS = ["tests/test_web.py", "tests/test_widget.py", "tests/test_agent_chat_ui.py"]


def cmd_screenshots() -> int:
    """The browser tests with UPDATE_SCREENSHOTS=1, which write their pictures into docs/screenshots/ (a test run
    writes them to a temporary folder); fails when a picture the docs hold was not redrawn (no Chromium: skipped)."""
    shots = ROOT / "docs" / "screenshots"
    started = time.time()
    env = {**os.environ, "UPDATE_SCREENSHOTS": "1"}
    cmd = [str(PY), "-m", "pytest", "-q", *SCREENSHOT_TESTS]
    print("[run.py] $ UPDATE_SCREENSHOTS=1 " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    stale = sorted(p.name for p in shots.glob("*.png") if p.stat().st_mtime < started)
    if stale:
        print(f"[run.py] not redrawn: {', '.join(stale)} (were the browser tests skipped? apt-get install chromium "
              "fonts-noto-cjk)", flush=True)
        return rc or 1
    return rc


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"serve", "test", "agent", "install", "docs", "screenshots"}:
        print(__doc__)
        print("also: python3 run.py agent <sixshop-agent args>   # any CLI subcommand in the venv")
        return 2
    what, rest = sys.argv[1], sys.argv[2:]
    ensure_venv()
    if what == "install":
        return 0
    if what == "test":
        return cmd_test(rest)
    if what == "screenshots":
        return cmd_screenshots()
    if what == "docs":
        os.execv(str(BIN / "mkdocs"), [str(BIN / "mkdocs"), "serve", "-a", "127.0.0.1:8001", *rest])
    agent = [str(BIN / "sixshop-agent")]
    if what == "serve":
        os.execv(agent[0], [*agent, "serve", *rest])
    os.execv(agent[0], [*agent, *rest])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
