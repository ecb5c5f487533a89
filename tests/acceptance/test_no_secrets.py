"""End to end: a worker with a password in DATABASE_URL never shows the password anywhere.

The worker runs against a private embedded PostgreSQL so the test can stop it (an outage) and
start it again without touching the shared server.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from pgcelery import create_app
from pgcelery.embedded import EmbeddedPostgres
from pgcelery.observability.redaction import secret_forms
from pgcelery.schema import migrations
from pgcelery.settings import Settings
from tests.support.postgres import unique_name
from tests.support.waiting import wait_until
from tests.support.workers import free_port, http_get, metrics_worker_env, worker_process

TIMEOUT = 90
ARGV = [
    *("celery", "-A", "tests.support.app", "worker", "-P", "solo", "-c", "1"),
    *("-I", "tests.support.observed_tasks", "--loglevel=INFO"),
]


@pytest.fixture
def private_server() -> Iterator[EmbeddedPostgres]:
    root = Path(tempfile.mkdtemp(prefix="pgcelery-nosecrets-"))
    # An OS-assigned port: the low range free_port() scans is shared with other embedded servers,
    # one of which could take this port while the test has the server stopped.
    server = EmbeddedPostgres(root / "pgdata", port=free_port(), durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _password_url(server: EmbeddedPostgres) -> tuple[str, str]:
    """A new role with a password (with characters that need encoding) owning a new DB."""
    role, database = unique_name("pgc_role"), unique_name("pgc_ns")
    password = f"Pw{uuid.uuid4().hex}@:/%?"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(role)
            )
        )
    url = f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:{server.port}/{database}"
    return url, password


def _health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = http_get(port, "/health")
    return status, (json.loads(body) if status else {})


def _rows(url: str) -> list[bytes]:
    """Every value of every row of the result tables, as bytes."""
    values: list[bytes] = []
    with psycopg.connect(url) as conn:
        for table in ("celery_taskmeta", "celery_tasksetmeta"):
            for row in conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        values.append(bytes(value))
                    elif value is not None:
                        values.append(str(value).encode())
    return values


def test_password_never_appears_through_startup_outage_failure_and_shutdown(
    private_server: EmbeddedPostgres,
) -> None:
    url, password = _password_url(private_server)
    migrations.upgrade(url)
    port = free_port()
    client = create_app(
        "no-secrets-client", settings=Settings(DATABASE_URL=url, PGCELERY_METRICS_ENABLED=False)
    )
    served: list[str] = []
    with worker_process(url, ARGV, metrics_worker_env(port)) as worker:
        wait_until(lambda: _health(port)[0] == 200, timeout=TIMEOUT, what="/health 200")

        # Outage: PostgreSQL stops; the worker lives on and /health names the database.
        private_server.stop()
        _, body = wait_until(
            lambda: (reply := _health(port))[0] == 503 and reply, timeout=TIMEOUT, what="503"
        )
        assert body["failing"] == ["database"]
        assert body["checks"]["broker"]["status"] == "skipped"
        served += [json.dumps(body), http_get(port, "/metrics")[1], http_get(port, "/livez")[1]]
        assert http_get(port, "/livez")[0] == 200
        wait_until(lambda: "Cannot connect" in worker.output(), timeout=TIMEOUT, what="retry")
        assert worker.alive()

        private_server.start()
        wait_until(lambda: _health(port)[0] == 200, timeout=TIMEOUT, what="/health 200 again")

        # A task that prints, logs and raises its DATABASE_URL.
        result = client.send_task("tests.leak_url")
        result.get(timeout=TIMEOUT, propagate=False)
        assert result.state == "FAILURE"
        assert "could not reach" in str(result.result)
        assert "***" in str(result.result)
        served += [http_get(port, "/metrics")[1], json.dumps(_health(port)[1])]
    client.close()
    assert worker.proc.returncode == 0

    output = worker.log_path.read_bytes()
    assert b"printing the url" in output
    assert b"logging the url" in output
    assert b"could not reach" in output
    stored = _rows(url)
    assert any(b"could not reach" in value for value in stored)
    for form in secret_forms(password):
        secret = form.encode()
        assert secret not in output, f"password form {form!r} in the worker output"
        assert not any(secret in value for value in stored), f"{form!r} in the result tables"
        assert not any(form in text for text in served), f"{form!r} served over HTTP"
