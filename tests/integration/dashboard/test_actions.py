"""The actions over HTTP: confirmed with a signed token, done on the real tables, logged."""

from __future__ import annotations

import logging
import re

import psycopg
import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController
from celery.result import AsyncResult
from starlette.testclient import TestClient

from pgcelery.dashboard import create_dashboard
from pgcelery.exceptions import DeliveryLimitExceeded
from pgcelery.settings import Settings
from tests.support.postgres import scalar


def _confirm(client: TestClient, action: str, target: str) -> str:
    page = client.get(f"/actions/{action}/{target}")
    assert page.status_code == 200
    found = re.search(r'name="token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def _messages(database_url: str, queue: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id"
            " WHERE q.name = %s",
            (queue,),
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def action_log() -> list[logging.LogRecord]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("pgcelery.dashboard.actions")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_retry_sends_a_failed_task_again(
    client: TestClient,
    app: Celery,
    worker: TestWorkController,
    action_log: list[logging.LogRecord],
) -> None:
    failed = app.send_task("tests.fail", ("again",))
    with pytest.raises(RuntimeError):
        failed.get(timeout=30)
    token = _confirm(client, "retry", failed.id)
    done = client.post(f"/actions/retry/{failed.id}", data={"token": token}, follow_redirects=False)
    assert done.status_code == 303
    new_id = done.headers["location"].split("/tasks/")[1].split("?")[0]
    assert new_id != failed.id
    again = AsyncResult(new_id, app=app)
    with pytest.raises(RuntimeError, match="again"):
        again.get(timeout=30)
    assert again.name == "tests.fail"
    logged = [r for r in action_log if r.getMessage() == "pgcelery.dashboard.action"]
    assert [(r.action, r.target, r.new_task_id) for r in logged] == [  # type: ignore[attr-defined]
        ("retry", failed.id, new_id)
    ]


def test_retry_refuses_a_successful_task(
    client: TestClient, app: Celery, worker: TestWorkController
) -> None:
    ok = app.send_task("tests.add", (1, 2))
    assert ok.get(timeout=30) == 3
    token = _confirm(client, "retry", ok.id)
    refused = client.post(f"/actions/retry/{ok.id}", data={"token": token})
    assert refused.status_code == 409


def test_revoke_removes_the_pending_message_and_marks_the_result(
    client: TestClient, app: Celery, database_url: str, action_log: list[logging.LogRecord]
) -> None:
    parked = app.send_task("tests.add", (1, 1), queue="parked")
    assert _messages(database_url, "parked") == 1
    token = _confirm(client, "revoke", parked.id)
    done = client.post(f"/actions/revoke/{parked.id}", data={"token": token})
    assert done.status_code == 200
    assert _messages(database_url, "parked") == 0
    assert parked.state == "REVOKED"
    page = client.get(f"/tasks/{parked.id}").text
    assert "REVOKED" in page
    assert "tests.add" in page
    assert any(getattr(r, "action", None) == "revoke" for r in action_log)
    # A token works once (pgcelery.dashboard.security): confirm again to try again.
    token = _confirm(client, "revoke", parked.id)
    again = client.post(f"/actions/revoke/{parked.id}", data={"token": token})
    assert again.status_code == 409


def test_purge_empties_a_queue(
    client: TestClient, app: Celery, database_url: str, action_log: list[logging.LogRecord]
) -> None:
    for i in range(3):
        app.send_task("tests.add", (i, i), queue="doomed")
    assert _messages(database_url, "doomed") == 3
    token = _confirm(client, "purge", "doomed")
    done = client.post("/actions/purge/doomed", data={"token": token})
    assert done.status_code == 200
    # The page shows a fixed notice (no text travels in its URL); the count is in the log.
    assert "Queue purged." in done.text
    assert any("3 message(s) deleted" in str(vars(r)) for r in action_log)
    assert _messages(database_url, "doomed") == 0


def test_an_action_without_a_valid_token_is_refused(
    client: TestClient, app: Celery, database_url: str
) -> None:
    app.send_task("tests.add", (1, 1), queue="kept")
    assert client.post("/actions/purge/kept", data={}).status_code == 403
    token_for_other = _confirm(client, "purge", "other")
    forged = client.post("/actions/purge/kept", data={"token": token_for_other})
    assert forged.status_code == 403
    assert _messages(database_url, "kept") == 1


def test_actions_are_off_by_default(database_url: str, app: Celery) -> None:
    settings = Settings(DATABASE_URL=database_url)
    app.send_task("tests.add", (1, 1), queue="kept")
    with TestClient(create_dashboard(settings, app), base_url="http://localhost") as http:
        assert http.get("/actions/purge/kept").status_code == 404
        assert http.post("/actions/purge/kept", data={"token": "x"}).status_code == 404
        assert "Purge" not in http.get("/queues").text
    assert _messages(database_url, "kept") == 1


def test_a_dead_letter_is_listed_and_replayed(
    client: TestClient, app: Celery, worker: TestWorkController, database_url: str
) -> None:
    # Due in a moment (the worker is running already): time to mark it as if five workers
    # had died running it, so the claim that finds it due buries it.
    stuck = app.send_task("tests.add", args=(4, 5), countdown=2)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE kombu_message SET deliveries = 5, claimed_by = 'box:99'")
    with pytest.raises(DeliveryLimitExceeded):
        stuck.get(timeout=30)
    page = client.get("/dead-letters")
    assert page.status_code == 200
    assert stuck.id in page.text
    assert "box:99" in page.text
    found = re.search(r'href="/actions/replay/(\d+)"', page.text)
    assert found is not None
    letter = found.group(1)
    token = _confirm(client, "replay", letter)
    done = client.post(f"/actions/replay/{letter}", data={"token": token}, follow_redirects=False)
    assert done.status_code == 303
    assert AsyncResult(stuck.id, app=app).get(timeout=30) == 9
    assert "No dead letters." in client.get("/dead-letters").text
    token = _confirm(client, "replay", letter)
    again = client.post(f"/actions/replay/{letter}", data={"token": token})
    assert again.status_code == 409


def test_pause_and_resume_a_queue(client: TestClient, app: Celery, database_url: str) -> None:
    app.send_task("tests.add", (1, 1), queue="nightly")
    page = client.get("/queues")
    assert "/actions/pause/nightly" in page.text
    done = client.post(
        "/actions/pause/nightly", data={"token": _confirm(client, "pause", "nightly")}
    )
    assert done.status_code == 200
    assert "Queue paused" in done.text
    assert scalar(database_url, "SELECT count(*) FROM pgcelery_queue_pause") == 1
    page = client.get("/queues")
    assert "/actions/resume/nightly" in page.text
    token = _confirm(client, "resume", "nightly")
    assert "Queue resumed." in client.post("/actions/resume/nightly", data={"token": token}).text
    assert scalar(database_url, "SELECT count(*) FROM pgcelery_queue_pause") == 0
