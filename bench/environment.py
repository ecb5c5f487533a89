"""What the benchmark runs against: a PostgreSQL server, fresh databases, and Redis if any."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/15"


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """BENCH_DATABASE_URL, else the local server on 5432, else an embedded one."""
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _reachable(LOCAL_PG):
        yield LOCAL_PG
        return
    from pgcelery.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="pgcelery-bench-")) / "pgdata")
    server.start()
    try:
        yield server.url()
    finally:
        server.stop()


def fresh_database(admin_url: str) -> str:
    name = f"pgcelery_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def drop_database(admin_url: str, url: str) -> None:
    name = url.rpartition("/")[2]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A Redis for the comparison column: reachable on 6379, or started; None if neither."""
    import redis

    try:
        redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=1).ping()
        yield LOCAL_REDIS
        return
    except redis.RedisError:
        pass
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/15"
        for _ in range(100):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.RedisError:
                import time

                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672//"


@contextlib.contextmanager
def rabbitmq_server() -> Iterator[str | None]:
    """A RabbitMQ for the comparison column when one answers on 5672 (BENCH_AMQP_URL to
    name another); None otherwise. (Starting a rabbitmq-server takes a node name, a cookie and
    half a minute; the column is left out instead.)"""
    from kombu import Connection

    url = os.environ.get("BENCH_AMQP_URL") or LOCAL_AMQP
    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception:  # any failure to connect: no RabbitMQ column
        yield None
        return
    yield url


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 2**20:.0f} GiB RAM"
    return f"{os.cpu_count()} cores ({cpu}){memory}, Python {platform.python_version()}"


def server_version(admin_url: str) -> str:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0]}" if row else "PostgreSQL ?"
