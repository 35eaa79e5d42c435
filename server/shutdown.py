"""Graceful shutdown of a replica: SIGTERM (systemd, Docker, Kubernetes) or Ctrl-C drains before the server
stops.

On the first signal the process turns not-ready (`/health/ready` 503) and refuses new turns (503
`shutting_down`, safe to retry elsewhere: nothing was stored) while running turns go on. After
SHUTDOWN_DRAIN_SECONDS — time for a load balancer's health checks to take the replica out — the signal
is handed to the ASGI server (uvicorn), which closes the listener and gives open responses up to
SHUTDOWN_GRACE_SECONDS (its graceful-shutdown timeout) before cancelling them; cancelled turns store
their partial answer as `cancelled`, then the lifespan closes the pool. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def drain_on_signals(drain: Callable[[], bool], drain_s: float) -> Iterator[None]:
    """While inside, SIGTERM/SIGINT call `drain()` (True the first time) and then, after `drain_s`, the handler
    that was installed before (the ASGI server's own). Outside the main thread (an in-process test client)
    signals cannot be handled, and nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    installed: list[tuple[signal.Signals, Any]] = []
    for sig in SIGNALS:
        previous = signal.getsignal(sig)
        if not callable(previous):  # nobody to hand the stop to: leave the default behaviour alone
            continue

        def on_signal(sig: signal.Signals = sig, previous: Callable[[int, Any], Any] = previous) -> None:
            first = drain()
            if first and drain_s > 0:
                log.info("%s: draining for %.1f s before closing the listener", signal.Signals(sig).name, drain_s)
                loop.call_later(drain_s, previous, sig, None)
            else:
                previous(sig, None)

        loop.add_signal_handler(sig, on_signal)
        installed.append((sig, previous))
    try:
        yield
    finally:
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous)
