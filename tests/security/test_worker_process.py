"""A real worker process: it warns when it runs tenant tasks without a signing key, and it logs
and counts each forged message it refuses."""

from __future__ import annotations

import uuid

from celery.result import AsyncResult

from pgcelery import create_app
from pgcelery.settings import Settings
from tests.security import tasks
from tests.security.conftest import SIGNING_KEY, copy_as, insert_message, last_message
from tests.support.scrape import sample
from tests.support.waiting import wait_until
from tests.support.workers import free_port, http_get, metrics_worker_env, worker_process

TIMEOUT = 60
ARGV = [
    *("celery", "-A", "tests.support.app", "worker", "-P", "solo", "-c", "1"),
    *("-I", "tests.security.tasks", "--loglevel=INFO"),
]
WARNING = "pgcelery.security.unsigned_tenant_tasks"


def test_a_worker_with_tenant_tasks_and_no_key_warns(database_url: str) -> None:
    client = create_app("warn-client", settings=Settings(DATABASE_URL=database_url))
    try:
        with worker_process(database_url, ARGV, {"PGCELERY_SIGNING_KEY": ""}) as worker:
            wait_until(lambda: WARNING in worker.output(), timeout=TIMEOUT, what="the warning")
        with worker_process(database_url, ARGV, {"PGCELERY_SIGNING_KEY": SIGNING_KEY}) as worker:
            assert client.send_task("tests.security.echo", ("ab",)).get(timeout=TIMEOUT) == 2
            assert WARNING not in worker.output()
    finally:
        client.close()


def test_a_refused_message_is_logged_and_counted(database_url: str) -> None:
    settings = Settings(
        DATABASE_URL=database_url, PGCELERY_METRICS_ENABLED=False, PGCELERY_SIGNING_KEY=SIGNING_KEY
    )
    client = create_app("forged-client", include=["tests.security.tasks"], settings=settings)
    port = free_port()
    env = metrics_worker_env(port, PGCELERY_SIGNING_KEY=SIGNING_KEY)
    try:
        client.tasks[tasks.whoami.name].delay(tenant_id=str(uuid.uuid4()))
        queue_id, payload = last_message(database_url)
        forged_id, forged = copy_as(payload, pgcelery_tenant_id=str(uuid.uuid4()))
        insert_message(database_url, queue_id, forged)
        with worker_process(database_url, ARGV, env) as worker:
            result = AsyncResult(forged_id, app=client)
            result.get(timeout=TIMEOUT, propagate=False)
            assert result.state == "FAILURE"
            wait_until(
                lambda: "pgcelery.security.forged_message" in worker.output(),
                timeout=TIMEOUT,
                what="the security event in the log",
            )
            status, body = http_get(port, "/metrics")
            assert status == 200
            name = "tests.security.whoami"
            assert sample(body, "pgcelery_forged_messages_total", name=name) == 1
            assert SIGNING_KEY not in worker.output()
    finally:
        client.close()
