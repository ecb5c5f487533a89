"""Every dashboard page, over HTTP, showing results a real worker produced."""

from __future__ import annotations

import re

import psycopg
import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController
from starlette.testclient import TestClient

from pgcelery.dashboard import create_dashboard
from pgcelery.settings import Settings


def _run_some_tasks(app: Celery) -> dict[str, str]:
    ok = app.send_task("tests.add", (2, 3))
    assert ok.get(timeout=30) == 5
    bad = app.send_task("tests.fail", ("boom from the test",))
    with pytest.raises(RuntimeError):
        bad.get(timeout=30)
    tenant = app.send_task("tests.echo", (1,), {"tenant_id": "acme", "x": "y"})
    tenant.get(timeout=30)
    parked = app.send_task("tests.add", (1, 1), queue="parked")
    return {"ok": ok.id, "bad": bad.id, "tenant": tenant.id, "parked": parked.id}


def test_queues_page_shows_depth_in_flight_and_throughput(
    client: TestClient, app: Celery, worker: TestWorkController
) -> None:
    _run_some_tasks(app)
    page = client.get("/queues")
    assert page.status_code == 200
    parked = re.search(r'data-queue="parked">.*?</tr>', page.text, re.S)
    assert parked is not None
    assert '<td class="n pending">1</td>' in parked.group(0)
    celery_row = re.search(r'data-queue="celery">.*?</tr>', page.text, re.S)
    assert celery_row is not None
    assert "<svg" in page.text
    assert "3 results" in page.text, "the chart counts the three finished tasks"


def test_fragment_request_returns_only_the_content(client: TestClient) -> None:
    full = client.get("/queues")
    part = client.get("/queues", headers={"X-Dashboard-Fragment": "1"})
    assert "<html" in full.text
    assert "dashboard.js" in full.text
    assert "<html" not in part.text
    assert "<h1>Queues</h1>" in part.text


def test_workers_page_lists_the_running_worker(
    client: TestClient, worker: TestWorkController
) -> None:
    from tests.support.waiting import wait_until

    page = wait_until(
        lambda: (r := client.get("/workers")) and worker.hostname in r.text and r,
        timeout=30,
        what="the worker's heartbeat on the page",
    )
    assert "solo" in page.text
    assert "badge fail" not in page.text


def test_workers_page_marks_a_worker_stale(client: TestClient, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO pgcelery_worker (hostname, pid, pool, concurrency, last_seen)"
            " VALUES ('gone@host', 1, 'prefork', 4, now() - interval '5 minutes')"
        )
    page = client.get("/workers")
    assert "gone@host" in page.text
    assert '<span class="badge fail">stale</span>' in page.text


def test_tasks_page_lists_and_filters(
    client: TestClient, app: Celery, worker: TestWorkController
) -> None:
    ids = _run_some_tasks(app)
    everything = client.get("/tasks").text
    assert ids["ok"] in everything
    assert ids["bad"] in everything
    assert ids["tenant"] in everything
    failed = client.get("/tasks", params={"state": "FAILURE"}).text
    assert ids["bad"] in failed
    assert ids["ok"] not in failed
    named = client.get("/tasks", params={"name": "tests.add"}).text
    assert ids["ok"] in named
    assert ids["bad"] not in named
    tenant = client.get("/tasks", params={"tenant": "acme"}).text
    assert ids["tenant"] in tenant
    assert ids["ok"] not in tenant
    future = client.get("/tasks", params={"since": "2999-01-01T00:00"}).text
    assert "No results match." in future
    pending = client.get("/tasks", params={"state": "PENDING"}).text
    assert ids["parked"] in pending


def test_tasks_page_paginates_by_keyset(
    client: TestClient, app: Celery, worker: TestWorkController
) -> None:
    from pgcelery.dashboard.app import Dashboard

    results = [app.send_task("tests.add", (i, i)) for i in range(5)]
    for result in results:
        result.get(timeout=30)
    board: Dashboard = client.app.state.dashboard  # type: ignore[attr-defined]
    first = board.queries.tasks(limit=3)
    second = board.queries.tasks(limit=3, cursor=first.next_cursor)
    assert len(first.rows) == 3
    assert first.next_cursor
    assert len(second.rows) == 2
    assert second.next_cursor is None
    seen = [r.task_id for r in first.rows + second.rows]
    assert sorted(seen) == sorted(r.id for r in results)
    page = client.get("/tasks")
    assert page.status_code == 200


def test_task_page_shows_arguments_result_and_traceback(
    client: TestClient, app: Celery, worker: TestWorkController
) -> None:
    ids = _run_some_tasks(app)
    ok = client.get(f"/tasks/{ids['ok']}").text
    assert "SUCCESS" in ok
    assert "tests.add" in ok
    assert "5" in ok.split('class="json result"')[1]
    bad = client.get(f"/tasks/{ids['bad']}").text
    assert "Traceback" in bad
    assert "boom from the test" in bad
    assert "RuntimeError" in bad
    tenant = client.get(f"/tasks/{ids['tenant']}").text
    assert "&#34;tenant_id&#34;: &#34;acme&#34;" in tenant or '"tenant_id": "acme"' in tenant
    parked = client.get(f"/tasks/{ids['parked']}").text
    assert "PENDING" in parked
    assert "waiting in queue parked" in parked
    assert client.get("/tasks/no-such-task").status_code == 404


def test_task_page_redacts_the_database_password(
    client: TestClient, database_url: str, app: Celery
) -> None:
    from pgcelery.observability import redaction

    redaction.register_url("postgresql://u:s3cret-pass@h/db")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO celery_taskmeta (id, task_id, status, traceback, date_done, name)"
            " VALUES (nextval('task_id_sequence'), 'leaky', 'FAILURE',"
            " 'OperationalError: password s3cret-pass refused', now(), 'tests.leak')"
        )
    page = client.get("/tasks/leaky").text
    assert "s3cret-pass" not in page
    assert "password *** refused" in page


def test_failures_page_groups_by_exception_type(
    client: TestClient, app: Celery, worker: TestWorkController
) -> None:
    for message in ("one", "two"):
        with pytest.raises(RuntimeError):
            app.send_task("tests.fail", (message,)).get(timeout=30)
    page = client.get("/failures").text
    group = re.search(r'<tr class="failure-group">.*?</tr>', page, re.S)
    assert group is not None
    assert "RuntimeError" in group.group(0)
    assert '<td class="n">2</td>' in group.group(0)


def test_basic_auth_when_configured(database_url: str, app: Celery) -> None:
    settings = Settings(
        DATABASE_URL=database_url,
        PGCELERY_DASHBOARD_USER="ops",
        PGCELERY_DASHBOARD_PASSWORD="pw-123",
    )
    with TestClient(create_dashboard(settings, app), base_url="http://localhost") as http:
        assert http.get("/queues").status_code == 401
        assert http.get("/queues", auth=("ops", "wrong")).status_code == 401
        assert http.get("/static/dashboard.js").status_code == 401
        assert http.get("/queues", auth=("ops", "pw-123")).status_code == 200
