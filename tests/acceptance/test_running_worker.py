"""Tasks round-trip through a worker running as its own process, as deployed.

With ``PGCELERY_EXTERNAL_WORKER=1`` the tests talk to an already-running worker on
``DATABASE_URL`` (CI starts one in the background with the Procfile's command); otherwise
they start that worker themselves, so they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from pgcelery import create_app
from pgcelery.settings import Settings
from tests.support.workers import worker_process


@pytest.fixture
def client(request: pytest.FixtureRequest) -> Iterator[Celery]:
    """A client app whose tasks a separately running worker executes."""
    if os.environ.get("PGCELERY_EXTERNAL_WORKER") == "1":
        url = os.environ.get("DATABASE_URL")
        if not url:
            pytest.fail("PGCELERY_EXTERNAL_WORKER=1 needs DATABASE_URL, the running worker's")
        app = create_app(settings=Settings(DATABASE_URL=url))
        yield app
        app.close()
        return
    database_url = request.getfixturevalue("database_url")
    app = create_app(settings=Settings(DATABASE_URL=database_url))
    with worker_process(database_url):
        yield app
    app.close()


def test_ping_reaches_the_running_worker(client: Celery) -> None:
    correlation_id = str(uuid.uuid4())
    reply = client.send_task(
        "housekeeping.ping", kwargs={"tenant_id": "tenant-a", "correlation_id": correlation_id}
    ).get(timeout=60)
    assert reply["status"] == "ok"
    assert reply["tenant_id"] == "tenant-a"
    assert reply["correlation_id"] == correlation_id
    assert reply["hostname"].startswith("celery@")


def test_a_burst_of_tasks_all_complete(client: Celery) -> None:
    results = [
        client.send_task("housekeeping.ping", kwargs={"correlation_id": str(n)}) for n in range(10)
    ]
    replies = [result.get(timeout=60) for result in results]
    assert [reply["correlation_id"] for reply in replies] == [str(n) for n in range(10)]
    assert all(reply["status"] == "ok" for reply in replies)
