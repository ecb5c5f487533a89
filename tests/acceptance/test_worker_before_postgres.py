"""A worker started while PostgreSQL is down waits for it, then connects and runs tasks."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from pgcelery import create_app
from pgcelery.embedded import EmbeddedPostgres, free_port
from pgcelery.schema import migrations
from pgcelery.settings import Settings
from tests.support.waiting import wait_until
from tests.support.workers import worker_process


def test_worker_started_before_postgres_connects_once_it_is_up() -> None:
    root = Path(tempfile.mkdtemp(prefix="pgcelery-late-"))
    server = EmbeddedPostgres(root / "pgdata", port=free_port(), durable=False)
    url = server.url("pgcelery_late")
    try:
        with worker_process(url) as worker:  # the Procfile's command
            wait_until(
                lambda: "Cannot connect" in worker.output() or not worker.alive(),
                timeout=60,
                interval=0.1,
                what="the worker to report that PostgreSQL is unreachable",
            )
            assert worker.alive(), worker.output()

            server.start()
            # Migrate under another name, then rename: the worker must never see the database
            # half-migrated (a missing table is a programming error, not a connection error).
            staging = server.create_database("pgcelery_staging")
            migrations.upgrade(staging)
            with psycopg.connect(server.url(), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier("pgcelery_staging"), sql.Identifier("pgcelery_late")
                    )
                )

            client = create_app(settings=Settings(DATABASE_URL=url))
            try:
                result = client.send_task("housekeeping.ping", kwargs={"tenant_id": "late"})
                assert result.get(timeout=120)["tenant_id"] == "late"
            finally:
                client.close()
            assert worker.alive(), worker.output()
        assert worker.proc.returncode == 0, worker.output()
        assert "Connected to sqla+postgresql+psycopg://" in worker.output()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
