"""What the suite installs stays what it pinned: a third party's package.json naming "latest" or a range is
installed at its lock's version, with nothing resolved from the registry's tags (a local registry whose `latest`
has moved past the lock, as turbo's did, logs what npm asks for); an install that fails says which command and
npm's first error lines; every Python distribution in the venv is pinned in constraints.txt."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.fake_npm_registry import FakeNpmRegistry, integrity, tarball
from tests.node import (
    NPM_REGISTRY,
    NpmFailed,
    first_error_lines,
    installed,
    pinned_to_lock,
    run_npm,
    unpinned,
    unresolved,
    with_resolved,
)


def _project(registry: FakeNpmRegistry, spec: str, locked: str) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest = {"name": "probe-app", "version": "1.0.0", "private": True, "dependencies": {"left-probe": spec}}
    lock = {"name": "probe-app", "version": "1.0.0", "lockfileVersion": 3, "requires": True, "packages": {
        "": {"name": "probe-app", "version": "1.0.0", "dependencies": {"left-probe": spec}},
        # no tarball URL ("resolved"), as the committed locks had none before: npm then reads the package's document
        # from the registry, and takes a dist-tag as met by a locked package only after reading the tag
        "node_modules/left-probe": {"version": locked, "integrity": integrity(tarball("left-probe", locked)),
                                    "license": "MIT"}}}
    return manifest, lock


def _write(where: Path, registry: FakeNpmRegistry, manifest: dict[str, Any], lock: dict[str, Any]) -> Path:
    """A project whose npm asks `registry` (its .npmrc) and nothing else."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "package.json").write_text(json.dumps(manifest, indent=2))
    (where / "package-lock.json").write_text(json.dumps(lock, indent=2))
    (where / ".npmrc").write_text(f"registry={registry.origin}/\n")
    return where


@pytest.fixture
def registry() -> Iterator[FakeNpmRegistry]:
    with FakeNpmRegistry({"left-probe": ["1.0.0", "1.0.1"]}) as reg:  # latest is 1.0.1, the lock holds 1.0.0
        yield reg


def test_a_tag_or_a_range_becomes_the_locks_exact_version() -> None:
    lock = {"packages": {"": {"dependencies": {"turbo": "latest", "vite": "^6.1.0", "zod": "3.24.2"},
                              "devDependencies": {"ts": "~5.7.2"}},
                         "node_modules/turbo": {"version": "2.11.11"}, "node_modules/vite": {"version": "6.3.5"},
                         "node_modules/zod": {"version": "3.24.2"}, "node_modules/ts": {"version": "5.7.3"},
                         "node_modules/alias": {"version": "1.2.0"}}}
    manifest = {"dependencies": {"turbo": "latest", "vite": "^6.1.0", "zod": "3.24.2"},
                "devDependencies": {"ts": "~5.7.2", "alias": "npm:real-pkg@^1"}}
    pinned, new_lock, changed = pinned_to_lock(manifest, lock)
    assert pinned["dependencies"] == {"turbo": "2.11.11", "vite": "6.3.5", "zod": "3.24.2"}
    assert pinned["devDependencies"] == {"ts": "5.7.3", "alias": "npm:real-pkg@1.2.0"}
    assert new_lock["packages"][""]["dependencies"] == pinned["dependencies"]  # the lock's root agrees with it
    assert new_lock["packages"][""]["devDependencies"]["ts"] == "5.7.3"
    assert sorted(changed) == ["alias: npm:real-pkg@^1 -> npm:real-pkg@1.2.0", "ts: ~5.7.2 -> 5.7.3",
                               "turbo: latest -> 2.11.11", "vite: ^6.1.0 -> 6.3.5"]
    assert manifest["dependencies"]["turbo"] == "latest"  # the inputs are left as they were
    assert unpinned(pinned, new_lock) == []
    with pytest.raises(ValueError, match="no version of missing"):
        pinned_to_lock({"dependencies": {"missing": "latest"}}, lock)
    with pytest.raises(ValueError, match="not a registry version"):
        pinned_to_lock({"dependencies": {"turbo": "github:vercel/turbo"}}, lock)


def test_latest_past_the_lock_installs_the_locks_version_and_resolves_no_tag(registry: FakeNpmRegistry,
                                                                             tmp_path: Path) -> None:
    manifest, lock = _project(registry, "latest", "1.0.0")
    # as the template came: npm ci refuses it, having looked the tag up (what turned CI red)
    raw = _write(tmp_path / "raw", registry, manifest, lock)
    with pytest.raises(NpmFailed) as refused:
        run_npm("ci", cwd=raw, cache=tmp_path / "cache-raw")
    assert "/left-probe" in registry.requests  # the package document, where the dist-tag is read
    assert any("does not satisfy" in line for line in refused.value.errors), refused.value.errors

    registry.requests.clear()
    pinned, pinned_lock, changed = pinned_to_lock(manifest, lock)
    assert changed == ["left-probe: latest -> 1.0.0"]
    pinned_lock = with_resolved(pinned_lock, registry.origin)  # as the committed locks are written
    assert unresolved(pinned_lock) == []
    app = installed(_write(tmp_path / "pinned", registry, pinned, pinned_lock), cache=tmp_path / "cache-pinned")
    got = json.loads((app / "node_modules" / "left-probe" / "package.json").read_text())
    assert got["version"] == "1.0.0"
    assert registry.requests == ["/left-probe/-/left-probe-1.0.0.tgz"]  # the lock's tarball; no document, no tag


def test_an_install_that_fails_names_its_command_and_first_errors_not_the_usage(registry: FakeNpmRegistry,
                                                                                tmp_path: Path) -> None:
    manifest, lock = _project(registry, "latest", "1.0.0")
    with pytest.raises(NpmFailed) as refused:
        run_npm("ci", cwd=_write(tmp_path, registry, manifest, lock), cache=tmp_path / "cache")
    text = str(refused.value)
    assert text.startswith(f"`npm ci` failed in {tmp_path} (exit 1):\nnpm error"), text
    assert "does not satisfy" in text and "Usage" not in text and "--install-strategy" not in text
    assert len(refused.value.errors) <= 12
    # npm's usage text after the description line is cut where it starts
    stderr = ("npm error `npm ci` can only install\nnpm error Invalid: x\nnpm error\n"
              "npm error Clean install a project\nnpm error\nnpm error Usage:\nnpm error npm ci\n")
    assert first_error_lines(stderr) == ["npm error `npm ci` can only install", "npm error Invalid: x"]


def test_an_unreachable_registry_is_told_apart(tmp_path: Path) -> None:
    with FakeNpmRegistry({"left-probe": ["1.0.0"]}) as reg:
        where = _write(tmp_path / "app", reg, *_project(reg, "1.0.0", "1.0.0"))
    # the registry is gone (its port closed): npm says ECONNREFUSED, which off CI skips and in CI fails
    with pytest.raises(NpmFailed) as failed:
        run_npm("ci", "--fetch-retries", "0", cwd=where, cache=tmp_path / "cache")
    assert failed.value.unreachable, failed.value.errors


def test_the_committed_locks_pin_every_package_to_a_tarball_and_the_sdk_to_its_version() -> None:
    for lock_path in (ROOT / "tests" / "js" / "package-lock.json", ROOT / "tests" / "axe" / "package-lock.json",
                      ROOT / "tests" / "agent_chat_ui" / "package-lock.json"):
        lock = json.loads(lock_path.read_text())
        assert len(lock["packages"]) > 1 and unresolved(lock) == [], lock_path
        assert all(e["resolved"].startswith(NPM_REGISTRY + "/") for k, e in lock["packages"].items()
                   if k and not e.get("inBundle")), lock_path
    for project, deps in (("js", {"@langchain/langgraph-sdk": "1.15.0"}), ("axe", {"axe-core": "4.14.1"})):
        manifest = json.loads((ROOT / "tests" / project / "package.json").read_text())
        assert manifest["dependencies"] == deps
        assert unpinned(manifest, json.loads((ROOT / "tests" / project / "package-lock.json").read_text())) == []


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path}: {line!r} is not an exact pin"
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_installed_python_distribution_is_pinned() -> None:
    """The venv run.py builds holds only what constraints.txt pins, at that version (pip, setuptools and the build
    backend included: the project is installed without build isolation, so no build step fetches a newer one)."""
    pins = _pins(ROOT / "constraints.txt")
    loose = {}
    for dist in distributions():
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name == "sixshop-ai-agent":
            continue
        if pins.get(name) != dist.version:
            loose[name] = (dist.version, pins.get(name))
    assert loose == {}, "installed (version, pinned) not as constraints.txt says: " + repr(loose)
