"""A real PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary folder, one per test module.

The server listens only on a unix socket in its own folder (no TCP port; the folder is the server user's alone,
so no other user of the machine can reach it), trusts its one role, and is stopped by its PID when the module
ends. PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user the Debian package
creates (or ``nobody``).
Each test gets a database of its own on the shared server (``postgres_url``), so tests never see each other's runs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

USER = "meddiag"  # the server's superuser (a database role, not a system user)
# Only names the socket file (.s.PGSQL.5432) in the server's own folder: with no TCP listener, servers of several
# test sessions at once cannot collide, so no free port is needed.
PORT = 5432
START_TIMEOUT_S = 60


def pg_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else the newest Debian install."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return installed[-1].parent if installed else None


def _system_user() -> str | None:
    """The unprivileged user to run the server as (None: this process is not root, it runs as itself)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    skip_outside_ci("running as root and neither a postgres nor a nobody user exists to run PostgreSQL as")


def skip_outside_ci(reason: str) -> NoReturn:
    """Skip on a developer machine without PostgreSQL; fail under CI (``CI`` set, as CI services and ``.ci/run``'s
    environment do), where ``.ci/run`` installs it: a module of skipped tests must not pass there."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason} (CI is set: the PostgreSQL tests must run there, not skip)", pytrace=False)
    pytest.skip(reason)


@dataclass
class PostgresServer:
    bin: Path
    folder: Path
    port: int
    as_user: str | None

    @property
    def socket_dir(self) -> Path:
        return self.folder / "socket"

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL dagster-postgres takes (psycopg2 named: SQLAlchemy 2.1's default driver is psycopg 3)."""
        return f"postgresql+psycopg2://{USER}@/{database}?host={self.socket_dir}&port={self.port}"

    @property
    def address(self) -> list[str]:
        return ["-h", str(self.socket_dir), "-p", str(self.port)]

    def command(self, tool: str, *args: str) -> str:
        """Run one PostgreSQL tool (as the server's user) in the server's folder; its stdout."""
        argv = [str(self.bin / tool), *args]
        if self.as_user:
            argv = ["runuser", "-u", self.as_user, "--", *argv]
        done = subprocess.run(argv, cwd=self.folder, capture_output=True, text=True, timeout=START_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stderr[-2000:]} (server log: {self.folder}/server.log)"
            )
        return done.stdout

    def psql(self, database: str, sql: str) -> list[str]:
        """The rows of one query, each as its columns joined by ``|`` (psql's unaligned output)."""
        return self.command(
            "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", *self.address, "-U", USER, "-d", database, "-c", sql
        ).splitlines()

    def pid(self) -> int | None:
        pidfile = self.folder / "data" / "postmaster.pid"
        return int(pidfile.read_text().split()[0]) if pidfile.is_file() else None


def _new_server(bin_dir: Path) -> PostgresServer:
    """A folder the server's user owns (short: a socket path is limited to about 100 bytes)."""
    as_user = _system_user()
    server = PostgresServer(bin_dir, Path(tempfile.mkdtemp(prefix="meddiag-pg-")), PORT, as_user)
    server.socket_dir.mkdir()
    if server.as_user:
        entry = pwd.getpwnam(server.as_user)
        for path in (server.folder, server.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return server


def _start(server: PostgresServer) -> None:
    """initdb, then pg_ctl start, which waits (-w) until the server accepts connections; pg_isready confirms."""
    data = str(server.folder / "data")
    server.command("initdb", "-D", data, "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync")
    options = f"-c listen_addresses='' -c unix_socket_directories={server.socket_dir} -p {server.port} -c fsync=off"
    server.command(
        "pg_ctl",
        "start",
        "-D",
        data,
        "-w",
        "-t",
        str(START_TIMEOUT_S),
        "-o",
        options,
        "-l",
        str(server.folder / "server.log"),
    )
    server.command("pg_isready", *server.address)


def _stop(server: PostgresServer) -> None:
    pid = server.pid()
    try:
        server.command("pg_ctl", "stop", "-D", str(server.folder / "data"), "-m", "fast", "-w")
    except (RuntimeError, subprocess.TimeoutExpired):
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_server():
    """One PostgreSQL server for the test module."""
    bin_dir = pg_bin()
    if bin_dir is None:
        skip_outside_ci(
            "PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql/*/bin): "
            "apt-get install postgresql"
        )
    server = _new_server(bin_dir)
    try:
        _start(server)
        yield server
    finally:
        _stop(server)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the module's server, as a connection URL."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    postgres_server.psql("postgres", f"CREATE DATABASE {name}")
    return postgres_server.url(name)
