"""`pgcelery check`, `purge` and `stats`, run as the installed console command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from celery import Celery

from pgcelery import create_app
from pgcelery.schema import migrations
from pgcelery.settings import Settings
from tests.support import postgres
from tests.support.schemas import login_role, url_as
from tests.support.workers import free_port

PGCELERY = Path(sys.executable).parent / "pgcelery"


def _run(*argv: str, database_url: str | None, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        base["DATABASE_URL"] = database_url
    return subprocess.run(
        [str(PGCELERY), *argv], env={**base, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def client(database_url: str) -> Iterator[Celery]:
    app = create_app(
        "cli-client", settings=Settings(DATABASE_URL=database_url, PGCELERY_METRICS_ENABLED=False)
    )
    yield app
    app.close()


def test_check_passes_on_a_migrated_database(database_url: str) -> None:
    done = _run("check", database_url=database_url)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("configuration", "database", "schema", "privileges"):
        assert f"ok   {name}:" in done.stdout


def test_check_exit_codes_name_the_failure(empty_database_url: str) -> None:
    unset = _run("check", database_url=None)
    assert unset.returncode == 2
    assert "FAIL configuration: " in unset.stdout
    assert "DATABASE_URL is not set" in unset.stdout

    nowhere = f"postgresql://nobody:secret-pw@127.0.0.1:{free_port()}/db"
    unreachable = _run("check", database_url=nowhere)
    assert unreachable.returncode == 3
    assert "FAIL database: cannot connect" in unreachable.stdout
    assert "secret-pw" not in unreachable.stdout + unreachable.stderr

    behind = _run("check", database_url=empty_database_url)
    assert behind.returncode == 4
    assert "run `pgcelery migrate`" in behind.stdout


def test_check_names_a_missing_privilege(
    pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with login_role(pg_admin_url) as role:
        name = postgres.unique_name("pgc_cli")
        owner_url = postgres.create_database(pg_admin_url, name)
        try:
            monkeypatch.setenv("PGCELERY_APP_ROLE", role)
            migrations.upgrade(owner_url)
            role_url = url_as(owner_url, role)
            assert _run("check", database_url=role_url).returncode == 0
            with psycopg.connect(postgres.libpq(owner_url), autocommit=True) as conn:
                conn.execute(f'REVOKE DELETE ON kombu_message FROM "{role}"')
            done = _run("check", database_url=role_url)
        finally:
            postgres.drop_database(pg_admin_url, name)
    assert done.returncode == 5, done.stdout
    assert f"FAIL privileges: role {role} lacks DELETE on kombu_message" in done.stdout


def test_purge_counts_then_deletes_waiting_messages(client: Celery, database_url: str) -> None:
    for i in range(3):
        client.send_task("tests.add", args=(i, i), queue="reports")
    dry = _run("purge", "--queue", "reports", database_url=database_url)
    assert dry.returncode == 1
    assert "would delete 3 waiting message(s)" in dry.stderr
    done = _run("purge", "--queue", "reports", "--yes", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert "deleted 3 waiting message(s)" in done.stdout
    unknown = _run("purge", "--queue", "nope", "--yes", database_url=database_url)
    assert unknown.returncode == 1
    assert "no queue named 'nope'; queues: " in unknown.stderr
    assert "reports" in unknown.stderr


def test_stats_as_json_and_as_a_table(client: Celery, database_url: str) -> None:
    client.send_task("tests.add", args=(1, 1))
    client.send_task("tests.add", args=(2, 2))
    with psycopg.connect(postgres.libpq(database_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO celery_taskmeta (id, task_id, status, date_done)"
            " VALUES (nextval('task_id_sequence'), 'failed-1', 'FAILURE', timezone('UTC', now()))"
        )
        conn.execute(
            "INSERT INTO pgcelery_worker (hostname, pid, pool, concurrency, processed)"
            " VALUES ('w1@host', 42, 'prefork', 4, 17)"
        )
    done = _run("stats", "--json", database_url=database_url)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    (celery_queue,) = [q for q in data["queues"] if q["name"] == "celery"]
    assert celery_queue["ready"] == 2
    assert celery_queue["in_flight"] == 0
    assert 0 <= celery_queue["oldest_ready_seconds"] < 120
    assert data["failures_last_hour"] == 1
    assert [(w["hostname"], w["processed"]) for w in data["workers"]] == [("w1@host", 17)]

    table = _run("stats", database_url=database_url)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "QUEUE",
        "READY",
        "IN",
        "FLIGHT",
        "DELAYED",
        "OLDEST",
        "READY",
    ]
    assert "Failures in the last hour: 1" in table.stdout
    assert "w1@host" in table.stdout
