from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pgcelery import dsn
from pgcelery.schema import migrations
from pgcelery.schema.names import VERSION_TABLE
from pgcelery.schema.tables import build_metadata, model_tables

ROOT = Path(__file__).resolve().parents[2]


def _diff(url: str) -> list[object]:
    engine = sa.create_engine(dsn.sync_url(url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_name": lambda name, kind, parent: name != VERSION_TABLE,
            },
        )
        return list(compare_metadata(context, build_metadata()))


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(dsn.sync_url(url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        return set(sa.inspect(connection).get_table_names())


def test_up_down_up_round_trip(empty_database_url: str) -> None:
    migrations.upgrade(empty_database_url)
    assert migrations.current(empty_database_url) == migrations.head()
    migrations.downgrade(empty_database_url, "base")
    assert migrations.current(empty_database_url) is None
    assert _tables(empty_database_url) == {VERSION_TABLE}
    migrations.upgrade(empty_database_url)
    assert migrations.current(empty_database_url) == migrations.head()
    assert _diff(empty_database_url) == []


def test_no_drift_against_kombu_and_celery_models(database_url: str) -> None:
    assert _diff(database_url) == []


def test_every_model_column_is_migrated(database_url: str) -> None:
    engine = sa.create_engine(dsn.sync_url(database_url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        for table in model_tables():
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert {c.name for c in table.columns} <= columns, table.name
        sequences = set(inspector.get_sequence_names())
    assert {
        "queue_id_sequence",
        "message_id_sequence",
        "task_id_sequence",
        "taskset_id_sequence",
    } <= sequences


def test_upgrade_twice_is_a_no_op(database_url: str) -> None:
    before = _tables(database_url)
    migrations.upgrade(database_url)
    assert migrations.current(database_url) == migrations.head()
    assert _tables(database_url) == before


def test_offline_sql_renders(monkeypatch: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head", "--sql"],
        cwd=ROOT,
        env={"DATABASE_URL": "postgresql://u:p@h/db", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE public.kombu_message" in result.stdout
    assert "CREATE TRIGGER pgcelery_message_notify" in result.stdout
    assert "pgcelery_alembic_version" in result.stdout


def test_alembic_cli_migrates_from_the_repository(empty_database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env={"DATABASE_URL": empty_database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert migrations.current(empty_database_url) == migrations.head()


def test_the_revisions_read_without_alembic_are_alembics() -> None:
    # A worker checks its database against pgcelery.schema.revisions, which reads file names
    # instead of loading Alembic: it must name the same chain and the same head.
    from alembic.script import ScriptDirectory

    from pgcelery.schema import revisions

    script = ScriptDirectory.from_config(migrations.config())
    assert set(revisions.revisions()) == {rev.revision for rev in script.walk_revisions()}
    assert revisions.head() == script.get_current_head()
    chain = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    assert list(revisions.revisions()) == chain
