"""Attacks on the queue with SQL as a role: reading every tenant's tasks, remote control.

The database is migrated with PGCELERY_PRODUCER_ROLE, PGCELERY_WORKER_ROLE and PGCELERY_OPS_ROLE
naming three non-owner, non-superuser roles: the database, not convention, refuses what a role
has no right to do, and a session scoped to tenant A sees only A's rows of ``kombu_message`` and
``celery_taskmeta``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from celery import Celery

from pgcelery import create_app
from pgcelery.settings import Settings
from tests.security.conftest import RoleDatabase
from tests.support import postgres
from tests.support.schemas import login_role, url_as
from tests.support.workers import solo_worker

TENANT_GUC = "app.current_tenant_id"


def _app(url: str, name: str) -> Celery:
    settings = Settings(DATABASE_URL=url, PGCELERY_METRICS_ENABLED=False, PGCELERY_PRUNE_INTERVAL=0)
    return create_app(name, include=["tests.security.tasks"], settings=settings)


@pytest.fixture
def apps(role_db: RoleDatabase) -> Iterator[dict[str, Celery]]:
    made = {
        "producer": _app(role_db.producer_url, "sec-producer"),
        "worker": _app(role_db.worker_url, "sec-worker"),
        "ops": _app(role_db.ops_url, "sec-ops"),
    }
    yield made
    for app in made.values():
        app.close()


def _scoped(url: str, tenant: str | None) -> psycopg.Connection:
    conn = psycopg.connect(postgres.libpq(url), autocommit=True)
    if tenant is not None:
        conn.execute("SELECT set_config(%s, %s, false)", (TENANT_GUC, tenant))
    return conn


def test_each_role_does_its_part_of_running_a_task(apps: dict[str, Celery]) -> None:
    with solo_worker(apps["worker"]):
        result = apps["producer"].send_task("tests.security.echo", ("four",))
        assert result.get(timeout=60) == 4


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT payload FROM kombu_message",
        "DELETE FROM kombu_message",
        "UPDATE kombu_message SET visible_at = now()",
        "UPDATE celery_taskmeta SET status = 'SUCCESS'",
        "DELETE FROM celery_taskmeta",
        "SELECT payload FROM pgcelery_dead_letter",
        "INSERT INTO pgcelery_broadcast (exchange, routing_key, payload)"
        " VALUES ('celery.pidbox', '', '{}')",
    ],
)
def test_the_producer_role_cannot_read_or_change_the_queue(
    role_db: RoleDatabase, apps: dict[str, Celery], statement: str
) -> None:
    # The producer role works (it can enqueue) ...
    apps["producer"].send_task("tests.security.echo", ("x",), queue="parked")
    # ... and can do nothing else to the queue.
    with (
        psycopg.connect(postgres.libpq(role_db.producer_url)) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)


def test_remote_control_only_from_the_ops_role(apps: dict[str, Celery]) -> None:
    # No worker listens: these broadcasts are written, and nobody acts on them.
    apps["ops"].control.broadcast("pool_restart")
    for role in ("worker", "producer"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            apps[role].control.broadcast("shutdown")
    # Workers still greet each other at start (Celery's mingle) and send task events.
    with apps["worker"].connection_for_write() as conn:
        apps["worker"].control.broadcast("hello", connection=conn, reply=False)
        apps["worker"].events.Dispatcher(conn, enabled=True).send("worker-heartbeat")


def test_a_tenant_scoped_session_sees_only_its_tenants_rows(
    role_db: RoleDatabase, apps: dict[str, Celery]
) -> None:
    tenant_a, tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
    whoami = apps["producer"].tasks["tests.security.whoami"]
    done = {t: whoami.delay(tenant_id=t) for t in (tenant_a, tenant_b)}
    with solo_worker(apps["worker"]):
        assert {t: r.get(timeout=60) for t, r in done.items()} == {t: t for t in done}
    parked = {t: whoami.apply_async(kwargs={"tenant_id": t}, queue="parked") for t in done}

    def results(url: str, tenant: str | None) -> set[str]:
        with _scoped(url, tenant) as conn:
            return {str(r[0]) for r in conn.execute("SELECT task_id FROM celery_taskmeta")}

    def messages(url: str, tenant: str | None) -> int:
        with _scoped(url, tenant) as conn:
            row = conn.execute("SELECT count(*) FROM kombu_message WHERE tenant_id IS NOT NULL")
            return int(row.fetchone()[0])  # type: ignore[index]

    assert results(role_db.producer_url, tenant_a) == {done[tenant_a].id}
    assert results(role_db.producer_url, tenant_b) == {done[tenant_b].id}
    assert results(role_db.worker_url, None) >= {r.id for r in done.values()}
    assert messages(role_db.worker_url, tenant_a) == 1
    assert messages(role_db.ops_url, None) == len(parked)


@pytest.mark.parametrize("column", ["other tenant", "no tenant"])
def test_a_tenant_scoped_producer_cannot_insert_outside_its_tenant(
    role_db: RoleDatabase, apps: dict[str, Celery], column: str
) -> None:
    apps["producer"].send_task("tests.security.echo", ("x",), queue="parked")
    tenant_a = str(uuid.uuid4())
    value = str(uuid.uuid4()) if column == "other tenant" else None
    with (
        _scoped(role_db.producer_url, tenant_a) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
    ):
        conn.execute(
            "INSERT INTO kombu_message (id, visible, timestamp, payload, version, queue_id,"
            " tenant_id) SELECT nextval('message_id_sequence'), true, now(), '{}', 1,"
            " (SELECT min(id) FROM kombu_queue), %s",
            (value,),
        )


def test_with_no_role_variables_the_app_role_keeps_every_right(
    pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgcelery.schema import migrations

    with login_role(pg_admin_url) as role:
        name = postgres.unique_name("pgc_sec")
        owner_url = postgres.create_database(pg_admin_url, name)
        try:
            monkeypatch.setenv("PGCELERY_APP_ROLE", role)
            migrations.upgrade(owner_url)
            app = _app(url_as(owner_url, role), "sec-app-role")
            try:
                app.control.broadcast("pool_restart")
                with solo_worker(app):
                    assert app.send_task("tests.security.echo", ("ab",)).get(timeout=60) == 2
            finally:
                app.close()
        finally:
            postgres.drop_database(pg_admin_url, name)


@pytest.mark.parametrize("connect_as", ["producer", "worker", "ops"])
def test_pgcelery_check_passes_for_each_role(
    role_db: RoleDatabase, monkeypatch: pytest.MonkeyPatch, connect_as: str
) -> None:
    from pgcelery.schema import preflight

    monkeypatch.setenv("DATABASE_URL", getattr(role_db, f"{connect_as}_url"))
    findings: list[preflight.Finding] = []
    assert preflight.run_checks(findings.append) == preflight.Exit.OK, findings
    checked = {f.detail.split()[1] for f in findings if f.name == "privileges"}
    assert checked == {role_db.producer, role_db.worker, role_db.ops}


def test_a_worker_process_runs_as_the_worker_role(role_db: RoleDatabase) -> None:
    """Celery's own worker start-up (mingle's hello, heartbeats, the prune pass) needs nothing
    the worker role lacks; its remote-control replies still reach an ops client."""
    from tests.support.workers import worker_process

    producer = _app(role_db.producer_url, "sec-producer-process")
    ops = _app(role_db.ops_url, "sec-ops-process")
    argv = ["celery", "-A", "tests.support.app", "worker", "-P", "solo", "--loglevel=INFO"]
    try:
        with worker_process(role_db.worker_url, argv) as worker:
            assert producer.send_task("tests.add", (2, 3)).get(timeout=60) == 5
            assert ops.control.ping(timeout=5), worker.output()[-3000:]
            assert "InsufficientPrivilege" not in worker.output()
            assert "row-level security" not in worker.output()
    finally:
        producer.close()
        ops.close()
