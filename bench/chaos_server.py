"""The private PostgreSQL ``make chaos`` owns: it may stop, start and fill it at will.

Always an embedded server of its own (never ``BENCH_DATABASE_URL`` or the local one on 5432):
the faults include restarting the server and taking every connection slot. Each scenario gets
a fresh, migrated database, so table sizes and dead tuples belong to that scenario alone.

The harness's own connections carry ``application_name`` ``HARNESS``, so the
``pg_terminate_backend`` storm can spare them (it terminates everyone else, the producer's
connections included).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.chaos_tasks import RUNS_DDL
from pgcelery import dsn
from pgcelery.embedded import EmbeddedPostgres, free_port
from pgcelery.schema import migrations

HARNESS = "pgcelery-chaos-harness"


def connect(url: str, *, autocommit: bool = True, timeout: int = 5) -> psycopg.Connection[Any]:
    """A harness connection: spared by the termination storm."""
    return psycopg.connect(
        dsn.libpq_url(url), autocommit=autocommit, connect_timeout=timeout, application_name=HARNESS
    )


class PrivateServer:
    """One embedded PostgreSQL on a port fixed for the whole run (so workers find it again)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pgcelery-chaos-"))
        # An explicit port: a restart must not move the server to another one.
        self.server = EmbeddedPostgres(self.root / "pgdata", port=free_port(), durable=False)

    @property
    def log_file(self) -> Path:
        return self.server.log_file

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def restart(self, down_for: float) -> None:
        """Fast shutdown (every session ends), ``down_for`` seconds down, start again."""
        self.server.stop()
        time.sleep(down_for)
        self.server.start()

    def admin_url(self) -> str:
        return self.server.url()

    def version(self) -> str:
        with connect(self.admin_url()) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'}"

    def max_connections(self) -> int:
        with connect(self.admin_url()) as conn:
            row = conn.execute("SHOW max_connections").fetchone()
        return int(row[0]) if row else 0

    def fresh_database(self, name: str) -> str:
        """Create, migrate and add the runs table to database ``name``; returns its URL."""
        with connect(self.admin_url()) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = self.server.url(name)
        migrations.upgrade(url)
        with connect(url) as conn:
            conn.execute(RUNS_DDL)
        return url

    def drop_database(self, url: str) -> None:
        name = url.rpartition("/")[2]
        with connect(self.admin_url()) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def private_server() -> Iterator[PrivateServer]:
    """The server, stopped and its data directory removed afterwards (its log and the workers'
    logs stay, next to where the data was)."""
    server = PrivateServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.server.datadir, ignore_errors=True)


def scalar(url: str, query: str, default: int = 0) -> int:
    """One integer from a short-lived harness connection; ``default`` when it cannot connect."""
    try:
        with connect(url) as conn:
            row = conn.execute(query).fetchone()
    except psycopg.OperationalError:
        return default
    return int(row[0]) if row and row[0] is not None else default
