"""Node.js packages for the browser-client tests, from the npm registry only, cached inside the clone
(`.cache/npm`, git-ignored): `npm ci` against a committed package-lock.json, so the versions are pinned."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

CACHE = ROOT / ".cache"


def npm() -> str:
    """npm, or skip (fail on CI, where .ci/run installs Node.js)."""
    found = shutil.which("npm")
    if found and shutil.which("node"):
        return found
    if os.environ.get("CI"):
        pytest.fail("Node.js and npm are not installed: .ci/run installs Debian's nodejs and npm")
    pytest.skip("no Node.js on this machine (apt-get install nodejs npm)")


def run_npm(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> None:
    done = subprocess.run([npm(), *args, "--no-audit", "--no-fund", "--cache", str(CACHE / "npm")], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"npm {' '.join(args)} failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def installed(project: Path) -> Path:
    """`npm ci` in `project` unless its node_modules matches its lock already; the project's path."""
    marker = project / "node_modules" / ".package-lock.json"
    lock = project / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        run_npm("ci", cwd=project)
    return project


AGENT_CHAT_APP = "create-agent-chat-app@0.1.6"  # its templates/vite is Agent Chat UI as a Vite app


def agent_chat_ui(build_dir: Path, env: dict[str, str]) -> Path:
    """Agent Chat UI built into `build_dir` with `env` (VITE_API_URL, VITE_ASSISTANT_ID): the template of
    AGENT_CHAT_APP from the npm registry, its dependencies from tests/agent_chat_ui/package-lock.json."""
    import tarfile

    home = CACHE / "agent-chat-ui"
    app = home / "app"
    if not (app / "package.json").exists():
        home.mkdir(parents=True, exist_ok=True)
        run_npm("pack", AGENT_CHAT_APP, "--pack-destination", str(home), cwd=home)
        (tarball,) = home.glob("create-agent-chat-app-*.tgz")
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/templates/vite/")]
            for m in members:
                m.name = m.name.removeprefix("package/templates/vite/")
            tar.extractall(app, members=members, filter="data")
    lock = ROOT / "tests" / "agent_chat_ui" / "package-lock.json"
    if not (app / "package-lock.json").exists() or (app / "package-lock.json").read_bytes() != lock.read_bytes():
        shutil.copy(lock, app / "package-lock.json")
    installed(app)
    done = subprocess.run([str(app / "node_modules" / ".bin" / "vite"), "build", "--outDir", str(build_dir),
                           "--emptyOutDir"], cwd=app, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    if done.returncode != 0:
        raise RuntimeError(f"vite build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return build_dir
