"""A throwaway PostgreSQL cluster for tests and benches.

SQLite cannot show row-lock contention or SERIALIZABLE retries, so the ledger's concurrency
tests run against a real server: initdb into a temp dir, tuned for speed over durability.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from ops.servers import HOST, ThrowawayServer

SUPERUSER = "postgres"
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found; "
    "install them with `apt-get install -y postgresql` (or set PG_BINDIR)"
)


def _has_initdb(bindir: str | os.PathLike[str]) -> bool:
    return os.access(Path(bindir) / "initdb", os.X_OK)


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)


def find_pg_bindir() -> str:
    """`pg_config --bindir` if it holds initdb (Debian's often doesn't), else the newest
    /usr/lib/postgresql/*/bin."""
    override = os.environ.get("PG_BINDIR")
    if override:
        if _has_initdb(override):
            return override
        raise RuntimeError(f"PG_BINDIR={override!r} has no executable initdb; {INSTALL_HINT}")
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        bindir = result.stdout.strip()
        if result.returncode == 0 and bindir and _has_initdb(bindir):
            return bindir
    candidates = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if _has_initdb(d)]
    if candidates:
        return max(candidates, key=_version_key)
    raise RuntimeError(INSTALL_HINT)


def _ensure_postgres_user() -> None:
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        subprocess.run(["useradd", "--system", SUPERUSER], check=True)


class PostgresServer(ThrowawayServer):
    """initdb + pg_ctl in a temp dir on a free port; `.url` is a ready SQLAlchemy URL."""

    def __init__(
        self, dbname: str = "aijobs_test", port: int | None = None, start_timeout: int = 60
    ) -> None:
        super().__init__(port)
        self.bindir = Path(find_pg_bindir())
        self.dbname = dbname
        self.start_timeout = start_timeout
        self._running = False
        # initdb refuses to run as root, so as root everything runs as the postgres user.
        self._as_root = os.geteuid() == 0

    @property
    def datadir(self) -> Path:
        assert self.tmpdir is not None, "server not started"
        return self.tmpdir / "data"

    @property
    def url(self) -> str:
        return self.url_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{dbname}"

    @property
    def conninfo(self) -> str:
        """libpq form (no SQLAlchemy driver prefix) for plain psycopg connections."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{self.dbname}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, read from postmaster.pid while the server runs."""
        try:
            return int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
        except (AssertionError, OSError, IndexError, ValueError):
            return None

    def _cmd(self, binary: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / binary), *args]
        return ["runuser", "-u", SUPERUSER, "--", *cmd] if self._as_root else cmd

    def _run(self, binary: str, *args: str) -> None:
        result = subprocess.run(
            self._cmd(binary, *args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            log = self.tmpdir / "postgres.log" if self.tmpdir else None
            log_text = log.read_text(errors="replace") if log and log.exists() else ""
            raise RuntimeError(
                f"{binary} failed with code {result.returncode}:\n"
                f"{result.stdout}{result.stderr}{log_text[-4000:]}"
            )

    def start(self) -> PostgresServer:
        """initdb, start, create the database; retries on a fresh port if one was stolen."""
        if self._running:
            return self
        self._make_tmpdir("aijobs-pg-")
        try:
            if self._as_root:
                _ensure_postgres_user()
                shutil.chown(self.tmpdir, user=SUPERUSER)
            self._run(
                "initdb", "-D", str(self.datadir), "-A", "trust", "-U", SUPERUSER,
                "--encoding", "UTF8", "--no-sync",
            )  # fmt: skip
            self._launch_on_free_port(self._pg_ctl_start, lambda: None)
            self._running = True
            self.create_database(self.dbname)
        except BaseException:
            self.stop()
            raise
        return self

    def _pg_ctl_start(self) -> None:
        assert self.tmpdir is not None
        options = (
            f"-p {self.port} -k {self.tmpdir} -c listen_addresses={HOST} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.tmpdir / "postgres.log"),
            "-w", "-t", str(self.start_timeout), "-o", options, "start",
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        """A fresh database per test module keeps suites independent; returns its URL."""
        admin = f"postgresql://{SUPERUSER}@{HOST}:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def _shutdown(self) -> None:
        """Immediate shutdown (no checkpoint; the data is thrown away anyway)."""
        if self.tmpdir is not None and (self.datadir / "postmaster.pid").exists():
            subprocess.run(
                self._cmd("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop"),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
        self._running = False
