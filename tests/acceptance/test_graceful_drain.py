"""SIGTERM drains a worker: in-flight tasks finish, prefetched ones go back at once, exit 0."""

from __future__ import annotations

import signal

import pytest
from celery import Celery

from tests.support.postgres import scalar
from tests.support.waiting import wait_until
from tests.support.workers import worker_process

TOTAL = 200
WORKER = ["celery", "-A", "tests.support.app", "worker", "-l", "INFO"]
SOLO = ["celery", "-A", "tests.support.app", "worker", "-P", "solo", "-c", "1", "-l", "WARNING"]
# A lease far longer than the test: a message that comes back before it ran out was handed back.
HELD = {"PGCELERY_VISIBILITY_TIMEOUT": "600", "PGCELERY_PREFETCH_MULTIPLIER": "4"}


POOLS = [["-P", "prefork", "-c", "2"], ["-P", "solo"]]


@pytest.mark.parametrize("pool", POOLS, ids=lambda argv: argv[1])
def test_sigterm_under_load_hands_back_and_nothing_runs_twice(
    runs_app: Celery, database_url: str, pool: list[str]
) -> None:
    results = [runs_app.send_task("tests.record_run", args=(f"d{i}", 0.05)) for i in range(TOTAL)]
    with worker_process(database_url, [*WORKER, *pool], HELD) as first:
        wait_until(
            lambda: scalar(database_url, "SELECT count(*) FROM test_runs") >= 20,
            timeout=120,
            what="the first worker to be mid-run",
        )
        held = scalar(database_url, "SELECT count(*) FROM kombu_message WHERE visible_at > now()")
        first.signal(signal.SIGTERM)
        code = first.proc.wait(60)
        output = first.output()
    assert code == 0, output
    assert held > 2, "the worker should have held prefetched messages when it was stopped"
    # Handed back on the way out, not left to a lease that runs for ten more minutes.
    leased = "SELECT count(*) FROM kombu_message WHERE lease_token IS NOT NULL"
    assert scalar(database_url, leased) == 0, output
    done_by_first = scalar(database_url, "SELECT count(*) FROM test_runs")
    assert done_by_first < TOTAL

    with worker_process(database_url, SOLO, HELD):
        states = [r.get(timeout=180) and r.status for r in results]
    assert states == ["SUCCESS"] * TOTAL
    assert scalar(database_url, "SELECT count(*) FROM test_runs") == TOTAL
    assert scalar(database_url, "SELECT count(DISTINCT label) FROM test_runs") == TOTAL
    assert scalar(database_url, "SELECT count(*) FROM kombu_message") == 0
