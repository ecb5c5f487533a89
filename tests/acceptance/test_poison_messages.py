"""A task that kills its worker runs at most PGCELERY_MAX_DELIVERIES times, then is a dead
letter with a FAILURE result; the worker keeps serving other tasks throughout."""

from __future__ import annotations

import pytest
from celery import Celery

from pgcelery.exceptions import DeliveryLimitExceeded
from tests.support.postgres import scalar
from tests.support.waiting import wait_until
from tests.support.workers import worker_process

APP = ["celery", "-A", "tests.support.app", "worker", "-l", "WARNING"]
RUNS = "SELECT count(*) FROM test_runs WHERE label = 'poison'"
BURIED = "SELECT count(*) FROM pgcelery_dead_letter"


def _assert_dead_letter(runs_app: Celery, runs_db: str, task_id: str, limit: int) -> None:
    assert scalar(runs_db, RUNS) == limit
    assert scalar(runs_db, "SELECT count(*) FROM kombu_message") == 0
    assert scalar(runs_db, "SELECT max(deliveries) FROM pgcelery_dead_letter") == limit
    with pytest.raises(DeliveryLimitExceeded, match=f"delivered {limit} times"):
        runs_app.AsyncResult(task_id).get(timeout=30)


def test_prefork_buries_a_task_that_kills_its_child_and_keeps_serving(
    runs_app: Celery, runs_db: str
) -> None:
    limit = 3
    env = {"PGCELERY_MAX_DELIVERIES": str(limit)}
    with worker_process(runs_db, [*APP, "-P", "prefork", "-c", "2"], env) as worker:
        poisoned = runs_app.send_task("tests.poison", args=("poison",))
        others = [runs_app.send_task("tests.add", args=(i, i)) for i in range(10)]
        assert [r.get(timeout=60) for r in others] == [2 * i for i in range(10)]
        wait_until(lambda: scalar(runs_db, BURIED) == 1, timeout=120, what="the dead letter")
        _assert_dead_letter(runs_app, runs_db, poisoned.id, limit)
        # Still serving.
        assert runs_app.send_task("tests.add", args=(20, 1)).get(timeout=30) == 21
        assert worker.alive(), worker.output()


def test_solo_workers_restarted_by_a_supervisor_bury_it_after_the_limit(
    runs_app: Celery, runs_db: str
) -> None:
    # Solo: the task takes the whole worker down; a supervisor (this loop) starts it again, and
    # the message comes back when its lease runs out.
    limit = 3
    env = {"PGCELERY_MAX_DELIVERIES": str(limit), "PGCELERY_VISIBILITY_TIMEOUT": "2"}
    poisoned = runs_app.send_task("tests.poison", args=("poison",))
    for _ in range(limit + 3):
        with worker_process(runs_db, [*APP, "-P", "solo"], env) as worker:
            wait_until(
                lambda worker=worker: not worker.alive() or scalar(runs_db, BURIED) == 1,
                timeout=60,
                what="the worker to die, or the message to be buried",
            )
            if scalar(runs_db, BURIED) == 1:
                assert runs_app.send_task("tests.add", args=(1, 2)).get(timeout=30) == 3
                assert worker.alive(), worker.output()
                break
    _assert_dead_letter(runs_app, runs_db, poisoned.id, limit)
