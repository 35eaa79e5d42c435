"""Node.js packages for the browser-client tests, from the npm registry only, cached inside the clone
(`.cache/npm`, git-ignored), and hermetic: every install is `npm ci` against a committed package-lock.json, with a
package.json whose every dependency names the exact version that lock holds. A dist-tag ("latest") or a range in a
third party's package.json is replaced by the lock's version before the install (`pinned_to_lock`), so a new
release on the registry never changes, or breaks, what the suite installs."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

CACHE = ROOT / ".cache"
SECTIONS = ("dependencies", "devDependencies", "optionalDependencies", "peerDependencies")
# npm's own calls home (its update check, audit, funding) are off: the registry sees only the install
NPM_ENV = {"NPM_CONFIG_UPDATE_NOTIFIER": "false", "NPM_CONFIG_AUDIT": "false", "NPM_CONFIG_FUND": "false"}
UNREACHABLE = ("ENOTFOUND", "ECONNREFUSED", "EAI_AGAIN", "ETIMEDOUT", "ECONNRESET", "ENETUNREACH")


class NpmFailed(RuntimeError):
    """An npm command failed: the message names the command, where it ran, and npm's first error lines."""

    def __init__(self, command: list[str], cwd: Path, returncode: int, stdout: str, stderr: str) -> None:
        self.command, self.returncode = command, returncode
        self.errors = first_error_lines(stderr) or stdout.strip().splitlines()[-12:]
        self.unreachable = any(code in stderr for code in UNREACHABLE)
        super().__init__(f"`{' '.join(command)}` failed in {cwd} (exit {returncode}):\n" + "\n".join(self.errors))


def first_error_lines(stderr: str, limit: int = 12) -> list[str]:
    """npm's `npm error` lines up to its usage text (the command's description and `Usage:` that npm appends to
    some failures say nothing about this one)."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.startswith("npm error")]
    if "npm error Usage:" in lines:
        lines = lines[:lines.index("npm error Usage:")]
        while lines and lines[-1] == "npm error":
            lines.pop()
        lines = lines[:-1]  # the command's one-line description, just before its usage
    while lines and lines[-1] == "npm error":
        lines.pop()
    return lines[:limit]


def npm() -> str:
    """npm, or skip (fail on CI, where .ci/run installs Node.js)."""
    found = shutil.which("npm")
    if found and shutil.which("node"):
        return found
    if os.environ.get("CI"):
        pytest.fail("Node.js and npm are not installed: .ci/run installs Debian's nodejs and npm")
    pytest.skip("no Node.js on this machine (apt-get install nodejs npm)")


def run_npm(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600,
            cache: Path | None = None) -> str:
    """`npm ARGS` in `cwd` (its stdout), or NpmFailed."""
    command = [npm(), *args, "--no-audit", "--no-fund", "--cache", str(cache or CACHE / "npm")]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **NPM_ENV, **(env or {})})
    if done.returncode != 0:
        raise NpmFailed(["npm", *args], cwd, done.returncode, done.stdout, done.stderr)
    return done.stdout


def prepared(what: str, step: Any, *args: Any, **kwargs: Any) -> Any:
    """`step(*args, **kwargs)` preparing a third-party client; its failure fails the test naming the command and
    npm's first error lines. Only an unreachable registry, off CI, skips instead (in CI a missing install step must
    not pass unseen)."""
    try:
        return step(*args, **kwargs)
    except NpmFailed as exc:
        if exc.unreachable and not os.environ.get("CI"):
            pytest.skip(f"preparing {what}: the npm registry is unreachable\n{exc}")
        pytest.fail(f"preparing {what}: {exc}", pytrace=False)


def lock_version(lock: dict[str, Any], name: str) -> str:
    entry = lock.get("packages", {}).get(f"node_modules/{name}")
    if not entry or "version" not in entry:
        raise ValueError(f"the lock holds no version of {name}: it cannot pin it")
    return str(entry["version"])


def pinned_to_lock(manifest: dict[str, Any], lock: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(package.json, lock, what changed): each dependency spec that is not an exact version (a dist-tag such as
    "latest", a range, "*") becomes the exact version the lock holds, in the manifest and in the lock's root entry,
    so `npm ci` checks the lock against exact versions and resolves nothing from the registry's tags. A spec npm
    would fetch from elsewhere (git, a URL, a file) is refused: the lock cannot pin it."""
    manifest, lock = json.loads(json.dumps(manifest)), json.loads(json.dumps(lock))
    root = lock.setdefault("packages", {}).setdefault("", {})
    changed: list[str] = []
    for section in SECTIONS:
        for name, spec in (manifest.get(section) or {}).items():
            if spec.startswith("npm:"):  # an alias: npm:real-name@spec
                exact = f"npm:{spec[4:].rsplit('@', 1)[0]}@{lock_version(lock, name)}"
            elif re.search(r"[:/]", spec) or spec.startswith((".", "~/")):
                raise ValueError(f"{section}.{name} = {spec!r} is not a registry version: the lock cannot pin it")
            else:
                exact = lock_version(lock, name)
            if spec == exact:
                continue
            manifest[section][name] = exact
            if name in (root.get(section) or {}):
                root[section][name] = exact
            changed.append(f"{name}: {spec} -> {exact}")
    return manifest, lock, changed


NPM_REGISTRY = "https://registry.npmjs.org"  # npm swaps this host for the configured registry (replace-registry-host)


def with_resolved(lock: dict[str, Any], registry: str = NPM_REGISTRY) -> dict[str, Any]:
    """The lock with each registry package's tarball URL written in (`resolved`), beside its integrity: `npm ci`
    then downloads those tarballs and reads no package document, so no dist-tag can be consulted at all. (A lock
    without them makes npm read each package's document to find the tarball.) Used once to write the committed
    locks; the tests check they hold them."""
    lock = json.loads(json.dumps(lock))
    for key, entry in lock.get("packages", {}).items():
        if not key or entry.get("link") or entry.get("inBundle") or "resolved" in entry:
            continue
        name = entry.get("name") or key.rsplit("node_modules/", 1)[1]
        url = f"{registry}/{name}/-/{name.rsplit('/', 1)[-1]}-{entry['version']}.tgz"
        items = list(entry.items())  # where npm writes it: after the version
        at = [k for k, _ in items].index("version") + 1
        entry.clear()
        entry.update([*items[:at], ("resolved", url), *items[at:]])
    return lock


def unresolved(lock: dict[str, Any]) -> list[str]:
    """The lock's packages that npm would look up in the registry's documents (no tarball URL or no integrity)."""
    return [key for key, entry in lock.get("packages", {}).items()
            if key and not entry.get("link") and not entry.get("inBundle")
            and not (entry.get("resolved") and entry.get("integrity"))]


def unpinned(manifest: dict[str, Any], lock: dict[str, Any]) -> list[str]:
    """The dependencies of a package.json that are not exactly the lock's version."""
    return pinned_to_lock(manifest, lock)[2]


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def installed(project: Path, cache: Path | None = None) -> Path:
    """`npm ci` in `project` unless its node_modules was installed from this very package.json and lock already;
    the project's path. Its package.json must name exact versions only, the lock's (see pinned_to_lock)."""
    manifest, lock = project / "package.json", project / "package-lock.json"
    locked = json.loads(lock.read_text())
    loose = unpinned(json.loads(manifest.read_text()), locked)
    if loose:
        raise ValueError(f"{manifest} names versions its lock does not pin exactly: {loose}")
    if unresolved(locked):
        raise ValueError(f"{lock} has packages without a tarball URL and integrity: {unresolved(locked)[:5]}")
    stamp = project / "node_modules" / ".sixshop-installed"
    want = _digest(manifest, lock)
    if not stamp.exists() or stamp.read_text() != want:
        run_npm("ci", cwd=project, cache=cache)
        stamp.write_text(want)
    return project


AGENT_CHAT_APP = "create-agent-chat-app@0.1.6"  # its templates/vite is Agent Chat UI as a Vite app
# the registry's dist.integrity of that tarball: what `npm pack` brings must be exactly it
AGENT_CHAT_APP_INTEGRITY = ("sha512-FmiAY3/1QHsScsfMRAtQBS9ljKvMDlG0yzgYhYiOgacSzO4cF755zJ4i/xCIpyaG/nnuW0HeAIOZgIgSVr"
                            "fOEQ==")


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def agent_chat_ui_app() -> Path:
    """The Vite template of AGENT_CHAT_APP in .cache/agent-chat-ui/app, its package.json pinned to
    tests/agent_chat_ui/package-lock.json, installed."""
    home = CACHE / "agent-chat-ui"
    app = home / "app"
    template = home / "template-package.json"  # the template's own package.json, as published
    if not template.exists():
        home.mkdir(parents=True, exist_ok=True)
        for old in home.glob("create-agent-chat-app-*.tgz"):
            old.unlink()
        run_npm("pack", AGENT_CHAT_APP, "--pack-destination", str(home), cwd=home)
        (tarball,) = home.glob("create-agent-chat-app-*.tgz")
        if _integrity(tarball) != AGENT_CHAT_APP_INTEGRITY:
            raise RuntimeError(f"{tarball.name} is not the tarball the tests pin ({AGENT_CHAT_APP_INTEGRITY})")
        shutil.rmtree(app, ignore_errors=True)
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/templates/vite/")]
            for m in members:
                m.name = m.name.removeprefix("package/templates/vite/")
            tar.extractall(app, members=members, filter="data")
        shutil.copy(app / "package.json", template)
    lock = json.loads((ROOT / "tests" / "agent_chat_ui" / "package-lock.json").read_text())
    manifest, lock, _ = pinned_to_lock(json.loads(template.read_text()), lock)
    for name, data in (("package.json", manifest), ("package-lock.json", lock)):
        text = json.dumps(data, indent=2) + "\n"
        if not (app / name).exists() or (app / name).read_text() != text:
            (app / name).write_text(text)
    return installed(app)


def agent_chat_ui(build_dir: Path, env: dict[str, str]) -> Path:
    """Agent Chat UI built into `build_dir` with `env` (VITE_API_URL, VITE_ASSISTANT_ID): the template of
    AGENT_CHAT_APP from the npm registry, its dependencies from tests/agent_chat_ui/package-lock.json."""
    app = prepared("Agent Chat UI", agent_chat_ui_app)
    done = subprocess.run([str(app / "node_modules" / ".bin" / "vite"), "build", "--outDir", str(build_dir),
                           "--emptyOutDir"], cwd=app, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    if done.returncode != 0:
        pytest.fail(f"preparing Agent Chat UI: `vite build` failed in {app} (exit {done.returncode}):\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}", pytrace=False)
    return build_dir
