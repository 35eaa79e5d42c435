"""Child processes for end-to-end tests and benchmarks: `sixshop-agent serve` on 127.0.0.1, or any server
with a readiness URL, with its output kept in a temp file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_s(pid: int, children: bool = True) -> float:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)] if children else [p]
        total = sum(t.user + t.system for t in (q.cpu_times() for q in procs))
        if children:  # children that exited and were waited for (PostgreSQL's backends): their time moved here
            own = p.cpu_times()
            total += own.children_user + own.children_system
        return total
    except psutil.Error:
        return float("nan")


class ChildProcess:
    def __init__(self, args: list[str], env: dict[str, str], ready_url: str) -> None:
        self.ready_url = ready_url
        self.killed = False
        self.log = tempfile.NamedTemporaryFile(prefix="sixshop-child-", suffix=".log", delete=False)
        # a process group of its own: stop() ends what it started too (granian's workers outlived their parent)
        self.proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env}, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited early:\n{self.output()[-4000:]}")
            try:
                if httpx.get(self.ready_url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"not ready in {timeout_s}s:\n{self.output()[-4000:]}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def rss_mb(self) -> float:
        """Resident memory of the process and its children."""
        import psutil

        try:
            p = psutil.Process(self.proc.pid)
            return (p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))) / 2**20
        except psutil.Error:
            return float("nan")

    def cpu_s(self) -> float:
        """CPU seconds used so far by the process and its children."""
        return process_cpu_s(self.proc.pid)

    def __enter__(self) -> Self:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.killed = True  # it did not stop in time after SIGTERM: what it flushes on the way out is lost
            self.proc.kill()
            self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its group is left
        self.log.close()


class ServerProcess(ChildProcess):
    """`sixshop-agent serve` on a free port, APP_ENV=test unless the env says otherwise."""

    def __init__(self, env: dict[str, str], port: int | None = None, ready_path: str = "/health") -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            {"APP_ENV": "test", "LANGSMITH_TRACING": "false", **env}, f"{self.base_url}{ready_path}",
        )
