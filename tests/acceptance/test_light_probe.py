"""A worker with metrics on serves /health and /metrics without loading SQLAlchemy (issue 19),
and still counts pgcelery.db's pool use once a task brings SQLAlchemy in."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from celery import Celery

from pgcelery import create_app
from pgcelery.settings import Settings
from tests.support.scrape import names, sample
from tests.support.waiting import wait_until
from tests.support.workers import free_port, http_get, metrics_worker_env, worker_process

TIMEOUT = 60
HOSTNAME = "light-probe@test"
ARGV = [
    "celery", "-A", "tests.support.probe_app", "worker",
    "-P", "solo", "-c", "1", "-l", "INFO", "-n", HOSTNAME,
]  # fmt: skip


@pytest.fixture
def client(database_url: str) -> Iterator[Celery]:
    app = create_app("light-probe-client", settings=Settings(DATABASE_URL=database_url))
    yield app
    app.close()


def test_health_and_metrics_without_sqlalchemy_then_pool_use_counted(
    database_url: str, client: Celery
) -> None:
    port = free_port()
    with worker_process(database_url, ARGV, metrics_worker_env(port)) as worker:
        wait_until(lambda: http_get(port, "/health")[0] == 200, timeout=TIMEOUT, what="/health")
        body = json.loads(http_get(port, "/health")[1])
        assert body["status"] == "ok"
        assert {"database", "broker", "schema"} <= set(body["checks"])

        assert client.send_task("tests.add", args=(1, 2)).get(timeout=TIMEOUT) == 3
        status, metrics_body = http_get(port, "/metrics")
        assert status == 200
        assert sample(metrics_body, "pgcelery_health_check_ok", check="broker") == 1
        assert "celery_queue_length" in names(metrics_body)  # the probe's broker query ran

        # Health checks and scrapes ran in this process, and SQLAlchemy is still not loaded.
        loaded = client.send_task("tests.probe.loaded", args=("sqlalchemy",))
        assert loaded.get(timeout=TIMEOUT) is False

        # A task that uses pgcelery.db loads it; from the next task on its pool is counted.
        client.send_task("tests.probe.db_in_use", args=(port, HOSTNAME)).get(timeout=TIMEOUT)
        held = client.send_task("tests.probe.db_in_use", args=(port, HOSTNAME))
        assert held.get(timeout=TIMEOUT) == 1
        after = http_get(port, "/metrics")[1]
        assert sample(after, "pgcelery_db_pool_connections_in_use", hostname=HOSTNAME) == 0
        assert worker.alive()
