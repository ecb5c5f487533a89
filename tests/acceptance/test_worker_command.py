"""`pgcelery worker -A APP` runs the service's own app with the Celery options given (issue 20)."""

from __future__ import annotations

from celery import Celery

from pgcelery import create_app
from pgcelery.settings import Settings
from tests.support.schemas import url_as
from tests.support.waiting import wait_until
from tests.support.workers import worker_process


def test_worker_runs_the_given_app_with_celery_options(database_url: str) -> None:
    # A password the trust-authenticated test server ignores: the hint must not print it.
    url = url_as(database_url, "postgres", "hint-secret-pw")
    argv = [
        "pgcelery", "worker", "-A", "tests.support.app", "-Q", "special",
        "--concurrency", "1", "-E", "--without-heartbeat", "-n", "passthrough@%h",
    ]  # fmt: skip
    with worker_process(url, argv) as worker:
        wait_until(
            lambda: " ready." in worker.output() or not worker.alive(),
            timeout=120,
            what="pgcelery worker to be ready",
        )
        assert worker.alive(), worker.output()
        client: Celery = create_app(
            "passthrough-client",
            settings=Settings(DATABASE_URL=database_url, PGCELERY_METRICS_ENABLED=False),
        )
        try:
            # tests.add exists only in the service's app, and only queue `special` is consumed.
            result = client.send_task("tests.add", args=(2, 3), queue="special")
            assert result.get(timeout=60) == 5
        finally:
            client.close()
        output = worker.output()
    assert "passthrough@" in output
    assert "special" in output
    assert "hint-secret-pw" not in output
    hint = output[output.index("send a task from another shell") :].splitlines()[:2]
    assert "with the same DATABASE_URL exported there" in hint[0]
    assert "***" not in "\n".join(hint)
