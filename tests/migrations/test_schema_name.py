"""PGCELERY_SCHEMA: migrations, broker and result backend all use the configured schema."""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pgcelery import create_app, dsn
from pgcelery.schema import migrations
from pgcelery.schema.names import VERSION_TABLE
from pgcelery.schema.tables import build_metadata
from pgcelery.settings import Settings
from tests.support.postgres import libpq
from tests.support.schemas import relations
from tests.support.workers import ROOT, solo_worker

SCHEMA = "pgcelery_jobs"
TABLES = {
    "kombu_queue",
    "kombu_message",
    "celery_taskmeta",
    "celery_tasksetmeta",
    "pgcelery_worker",
    "pgcelery_beat",
    "pgcelery_broadcast",
    "pgcelery_binding",
    "pgcelery_dead_letter",
    "pgcelery_chord",
    "pgcelery_chord_part",
    "pgcelery_unique_hold",
    "pgcelery_queue_pause",
    "pgcelery_tenant_weight",
    "pgcelery_limit_state",
    VERSION_TABLE,
}


@pytest.fixture
def schema_url(empty_database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PGCELERY_SCHEMA", SCHEMA)
    migrations.upgrade(empty_database_url)
    return empty_database_url


def _diff(url: str) -> list[object]:
    engine = sa.create_engine(dsn.sync_url(url), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_schemas": True,
                    "include_name": lambda name, kind, parent: (
                        name == SCHEMA if kind == "schema" else name != VERSION_TABLE
                    ),
                },
            )
            return list(compare_metadata(context, build_metadata(SCHEMA)))
    finally:
        engine.dispose()


def test_everything_lives_in_the_schema(schema_url: str) -> None:
    found = relations(schema_url)
    assert {name for schema, name, kind in found if kind == "r"} == TABLES
    assert {schema for schema, _, _ in found} == {SCHEMA}
    assert migrations.current(schema_url) == migrations.head()
    assert _diff(schema_url) == []


def test_round_trip_and_no_drift_in_the_schema(schema_url: str) -> None:
    migrations.upgrade(schema_url)  # a second upgrade is a no-op
    assert migrations.current(schema_url) == migrations.head()
    migrations.downgrade(schema_url, "base")
    assert {name for _, name, _ in relations(schema_url)} == {VERSION_TABLE}
    migrations.upgrade(schema_url)
    assert migrations.current(schema_url) == migrations.head()
    assert _diff(schema_url) == []


def test_task_round_trip_in_the_schema(schema_url: str) -> None:
    settings = Settings(
        DATABASE_URL=schema_url, PGCELERY_SCHEMA=SCHEMA, PGCELERY_METRICS_ENABLED=False
    )
    app = create_app("pgcelery-schema", include=["tests.support.tasks"], settings=settings)
    with ExitStack() as stack:
        stack.callback(app.close)
        stack.enter_context(solo_worker(app))
        assert app.send_task("tests.add", args=(20, 22)).get(timeout=30) == 42
    with psycopg.connect(libpq(schema_url)) as conn:
        assert conn.execute(f"SELECT count(*) FROM {SCHEMA}.kombu_message").fetchone() == (0,)
        status = conn.execute(f"SELECT status FROM {SCHEMA}.celery_taskmeta").fetchall()
        queues = conn.execute(f"SELECT name FROM {SCHEMA}.kombu_queue").fetchall()
    assert status == [("SUCCESS",)]
    assert ("celery",) in queues
    assert {schema for schema, _, _ in relations(schema_url)} == {SCHEMA}


def test_offline_sql_in_the_schema_applies_cleanly(empty_database_url: str) -> None:
    rendered = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head", "--sql"],
        cwd=ROOT,
        env={"DATABASE_URL": "postgresql://u:p@h/db", "PGCELERY_SCHEMA": SCHEMA, "PATH": "/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert f"CREATE TABLE {SCHEMA}.kombu_message" in rendered.stdout
    assert "%%" not in rendered.stdout
    # The script a DBA would run with psql must work as written.
    with psycopg.connect(libpq(empty_database_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{SCHEMA}"')
        conn.execute(rendered.stdout.encode())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PGCELERY_SCHEMA", SCHEMA)
        assert migrations.current(empty_database_url) == migrations.head()
    assert _diff(empty_database_url) == []
