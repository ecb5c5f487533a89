"""The app role gets exactly what workers and producers need, and runs tasks with only that."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import psycopg
import pytest

from pgcelery import create_app
from pgcelery.schema import migrations
from pgcelery.settings import Settings
from tests.support import postgres
from tests.support.schemas import login_role, url_as
from tests.support.workers import solo_worker

DML = {"SELECT", "INSERT", "UPDATE", "DELETE"}
EXPECTED_TABLES = {
    "kombu_queue": {"SELECT", "INSERT", "DELETE"},
    "kombu_message": DML,
    "celery_taskmeta": DML,
    "celery_tasksetmeta": DML,
    "pgcelery_beat": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "pgcelery_dead_letter": {"SELECT", "INSERT", "DELETE"},
    "pgcelery_chord": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "pgcelery_chord_part": {"SELECT", "INSERT", "DELETE"},
    "pgcelery_alembic_version": {"SELECT"},
    "pgcelery_broadcast": {"SELECT", "INSERT", "DELETE"},
    "pgcelery_binding": DML,
}
TABLE_PRIVILEGES = (*sorted(DML), "TRUNCATE", "REFERENCES", "TRIGGER")
SEQUENCES = (
    "queue_id_sequence",
    "message_id_sequence",
    "task_id_sequence",
    "taskset_id_sequence",
    "pgcelery_broadcast_id_seq",
)


@pytest.fixture
def granted(pg_admin_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, str]]:
    """(owner URL, app-role URL, role): a database migrated by the owner with the role present."""
    with login_role(pg_admin_url) as role:
        name = postgres.unique_name("pgc_g")
        owner_url = postgres.create_database(pg_admin_url, name)
        try:
            monkeypatch.setenv("PGCELERY_APP_ROLE", role)
            migrations.upgrade(owner_url)
            yield owner_url, url_as(owner_url, role), role
        finally:
            postgres.drop_database(pg_admin_url, name)


def _privileges(owner_url: str, role: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    with psycopg.connect(postgres.libpq(owner_url)) as conn:
        for table in EXPECTED_TABLES:
            for privilege in TABLE_PRIVILEGES:
                row = conn.execute(
                    "SELECT has_table_privilege(%s, %s, %s)", (role, f"public.{table}", privilege)
                ).fetchone()
                if row and row[0]:
                    found.setdefault(table, set()).add(privilege)
        for sequence in SEQUENCES:
            for privilege in ("USAGE", "SELECT", "UPDATE"):
                row = conn.execute(
                    "SELECT has_sequence_privilege(%s, %s, %s)",
                    (role, f"public.{sequence}", privilege),
                ).fetchone()
                if row and row[0]:
                    found.setdefault(sequence, set()).add(privilege)
    return found


def test_role_has_exactly_the_needed_privileges(granted: tuple[str, str, str]) -> None:
    owner_url, _, role = granted
    expected = {**EXPECTED_TABLES, **{sequence: {"USAGE"} for sequence in SEQUENCES}}
    assert _privileges(owner_url, role) == expected
    with psycopg.connect(postgres.libpq(owner_url)) as conn:
        row = conn.execute("SELECT has_schema_privilege(%s, 'public', 'CREATE')", (role,))
        assert row.fetchone() == (False,)


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE kombu_message",
        "TRUNCATE celery_taskmeta",
        "ALTER TABLE kombu_queue ADD COLUMN extra int",
        "UPDATE kombu_queue SET name = name",
        "DROP TABLE pgcelery_dead_letter",
        "SELECT setval('message_id_sequence', 1)",
        "INSERT INTO pgcelery_alembic_version VALUES ('x')",
        "DROP TRIGGER pgcelery_message_notify ON kombu_message",
        "CREATE TABLE public.intruder (id int)",
    ],
)
def test_role_cannot_change_the_schema(granted: tuple[str, str, str], statement: str) -> None:
    _, role_url, _ = granted
    with (
        psycopg.connect(postgres.libpq(role_url)) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)


def test_worker_as_app_role_processes_tasks(granted: tuple[str, str, str]) -> None:
    owner_url, role_url, role = granted
    settings = Settings(DATABASE_URL=role_url, PGCELERY_METRICS_ENABLED=False)
    app = create_app("pgcelery-role", include=["tests.support.tasks"], settings=settings)
    with ExitStack() as stack:
        stack.callback(app.close)
        stack.enter_context(solo_worker(app))
        results = [app.send_task("tests.add", args=(i, i)) for i in range(3)]
        assert [r.get(timeout=30) for r in results] == [0, 2, 4]
        with psycopg.connect(postgres.libpq(owner_url)) as conn:
            users = conn.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ).fetchall()
    assert users == [(role,)]
    with psycopg.connect(postgres.libpq(owner_url)) as conn:
        assert conn.execute("SELECT count(*) FROM kombu_message").fetchone() == (0,)
        statuses = conn.execute("SELECT status FROM celery_taskmeta").fetchall()
    assert statuses == [("SUCCESS",)] * 3


def test_migration_without_the_role_skips_grants(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGCELERY_APP_ROLE", postgres.unique_name("pgc_absent"))
    migrations.upgrade(empty_database_url)
    assert migrations.current(empty_database_url) == migrations.head()
    with psycopg.connect(postgres.libpq(empty_database_url)) as conn:
        acls = conn.execute(
            "SELECT relname, relacl FROM pg_class WHERE relname = ANY(%s)",
            (list(EXPECTED_TABLES) + list(SEQUENCES),),
        ).fetchall()
    assert len(acls) == len(EXPECTED_TABLES) + len(SEQUENCES)
    assert all(acl is None for _, acl in acls), acls
