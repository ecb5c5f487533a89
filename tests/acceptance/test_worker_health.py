"""/health and /livez of a real worker subprocess: schema behind, then migrated again."""

from __future__ import annotations

import json

from pgcelery import create_app
from pgcelery.schema import migrations
from pgcelery.settings import Settings
from tests.support.scrape import sample
from tests.support.waiting import wait_until
from tests.support.workers import free_port, http_get, metrics_worker_env, worker_process

TIMEOUT = 60
ARGV = ["celery", "-A", "tests.support.app", "worker", "-P", "solo", "-c", "1", "-l", "INFO"]


def _health(port: int) -> tuple[int, dict[str, object]]:
    status, body = http_get(port, "/health")
    return status, (json.loads(body) if status else {})


def test_health_turns_503_when_the_schema_is_behind_and_200_when_migrated(
    database_url: str,
) -> None:
    port = free_port()
    with worker_process(database_url, ARGV, metrics_worker_env(port)) as worker:
        wait_until(lambda: _health(port)[0] == 200, timeout=TIMEOUT, what="/health 200")
        status, body = _health(port)
        assert body["status"] == "ok"
        assert set(body["checks"]) == {"database", "broker", "schema", "listener"}  # type: ignore[arg-type]
        assert body["checks"]["listener"]["status"] == "ok"  # type: ignore[index]

        migrations.downgrade(database_url, "0001_initial")
        # Polled: under load a single probe can time out (status 0) rather than answer.
        status, body = wait_until(
            lambda: (reply := _health(port))[0] in (200, 503) and reply, timeout=TIMEOUT
        )
        assert status == 503
        assert body["failing"] == ["schema"]
        detail = body["checks"]["schema"]["detail"]  # type: ignore[index]
        assert "0001_initial" in detail
        assert migrations.head() in detail
        assert body["checks"]["database"]["status"] == "ok"  # type: ignore[index]
        metrics_body = http_get(port, "/metrics")[1]
        assert sample(metrics_body, "pgcelery_health_check_ok", check="schema") == 0
        assert sample(metrics_body, "pgcelery_health_check_ok", check="database") == 1
        assert http_get(port, "/livez") == (200, '{"status": "ok"}')

        migrations.upgrade(database_url)
        status, body = wait_until(
            lambda: (reply := _health(port))[0] in (200, 503) and reply, timeout=TIMEOUT
        )
        assert (status, body["status"]) == (200, "ok")
        assert worker.alive()
        # The worker survived the schema change and serves tasks again once migrated.
        client = create_app("health-client", settings=Settings(DATABASE_URL=database_url))
        assert client.send_task("tests.add", args=(2, 2)).get(timeout=TIMEOUT) == 4
        client.close()
        assert worker.alive()
