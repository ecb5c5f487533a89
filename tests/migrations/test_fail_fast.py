"""A worker or producer pointed at a database that is not at head stops with what to run."""

from __future__ import annotations

import psycopg
import pytest

from pgcelery import create_app
from pgcelery.exceptions import SchemaBehind, SchemaNotMigrated
from pgcelery.schema import migrations
from pgcelery.schema.check import check_schema, forget_checks, inspect_schema
from pgcelery.settings import Settings
from tests.support.postgres import libpq
from tests.support.schemas import relations, url_as
from tests.support.waiting import wait_until
from tests.support.workers import worker_process

PASSWORD = "never-print-this-pw"
FIX = "run `pgcelery migrate` (or `alembic upgrade heads` in a host's Alembic project)"


def _with_password(url: str) -> str:
    return url_as(url, "postgres", PASSWORD)


def _worker_failure(url: str) -> tuple[int, str]:
    with worker_process(url) as worker:
        wait_until(lambda: not worker.alive(), timeout=90, what="the worker to exit")
        output = worker.output()
    return worker.proc.returncode, output


def test_worker_refuses_an_unmigrated_database(empty_database_url: str) -> None:
    code, output = _worker_failure(_with_password(empty_database_url))
    assert code != 0, output
    assert "SchemaNotMigrated" in output
    assert FIX in output
    assert f"database at no revision, code expects {migrations.head()}" in output
    assert PASSWORD not in output
    assert relations(empty_database_url) == set()


def test_worker_refuses_a_database_behind_head(database_url: str) -> None:
    migrations.downgrade(database_url, "0001_initial")
    before = relations(database_url)
    code, output = _worker_failure(_with_password(database_url))
    assert code != 0, output
    assert "SchemaBehind" in output
    assert f"{FIX}; database at 0001_initial, code expects {migrations.head()}" in output
    assert PASSWORD not in output
    assert relations(database_url) == before
    assert migrations.current(database_url) == "0001_initial"


def test_producer_first_publish_raises_and_creates_nothing(empty_database_url: str) -> None:
    settings = Settings(DATABASE_URL=_with_password(empty_database_url))
    app = create_app("pgcelery-producer", include=["tests.support.tasks"], settings=settings)
    app.loader.import_default_modules()
    try:
        with pytest.raises(SchemaNotMigrated) as raised:
            app.tasks["tests.add"].apply_async(args=(1, 2))
        assert FIX in str(raised.value)
        assert PASSWORD not in str(raised.value)
        assert relations(empty_database_url) == set()

        # Not cached while failing: once migrated, the same process publishes.
        migrations.upgrade(empty_database_url)
        app.tasks["tests.add"].apply_async(args=(1, 2))
        with psycopg.connect(libpq(empty_database_url)) as conn:
            assert conn.execute("SELECT count(*) FROM kombu_message").fetchone() == (1,)
    finally:
        app.close()


def test_check_is_cached_once_it_passes(database_url: str) -> None:
    assert inspect_schema(database_url).at_head
    check_schema(database_url)
    migrations.downgrade(database_url, "0001_initial")
    check_schema(database_url)  # passed once in this process: not asked again
    forget_checks()
    with pytest.raises(SchemaBehind, match="database at 0001_initial"):
        check_schema(database_url)
