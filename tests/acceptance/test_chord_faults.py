"""A chord whose header task's worker is killed after the task's result was stored and counted,
before the ack: the body still runs exactly once with every header result, with prefork (the
child dies; Celery acks the task, whose success is stored) and solo (the whole worker dies; the
task is delivered again when its lease runs out, runs again and counts nothing)."""

from __future__ import annotations

from typing import Any

from celery import Celery, chord

from tests.support.postgres import scalar
from tests.support.waiting import wait_until
from tests.support.workers import worker_process

APP = ["celery", "-A", "tests.support.app", "worker", "-l", "WARNING"]
SIZE = 30
VICTIM = 7
BODY_RUNS = "SELECT count(*) FROM test_runs WHERE label = 'body'"
VICTIM_RUNS = "SELECT count(*) FROM test_runs WHERE label = 'victim'"


def _chord(app: Celery) -> Any:
    header = [
        app.signature("tests.canvas.die_after_storing", args=(i, "victim"))
        if i == VICTIM
        else app.signature("tests.add", args=(i, 0))
        for i in range(SIZE)
    ]
    return chord(header)(app.signature("tests.canvas.collect"))


def _assert_once(runs_app: Celery, runs_db: str, result: Any, victim_runs: int = 2) -> None:
    # The victim counted before it died, so the body may run before the victim runs again.
    assert result.get(timeout=120) == list(range(SIZE))
    wait_until(
        lambda: (
            scalar(runs_db, VICTIM_RUNS) == victim_runs
            and scalar(runs_db, "SELECT count(*) FROM kombu_message") == 0
        ),
        timeout=120,
        what="the killed header task to be settled",
    )
    assert scalar(runs_db, BODY_RUNS) == 1
    assert scalar(runs_db, "SELECT done FROM pgcelery_chord") == SIZE


def test_prefork_child_killed_after_counting_fires_the_body_once(
    runs_app: Celery, runs_db: str
) -> None:
    env = {"PGCELERY_VISIBILITY_TIMEOUT": "3"}
    with worker_process(runs_db, [*APP, "-P", "prefork", "-c", "2"], env) as worker:
        result = _chord(runs_app)
        # The parent sees the stored SUCCESS and acks instead of requeuing ("succeeded before
        # the worker was lost"): the victim ran once, and the body still exactly once.
        _assert_once(runs_app, runs_db, result, victim_runs=1)
        assert worker.alive(), worker.output()


def test_solo_worker_killed_after_counting_fires_the_body_once_after_restart(
    runs_app: Celery, runs_db: str
) -> None:
    env = {"PGCELERY_VISIBILITY_TIMEOUT": "3"}
    result = _chord(runs_app)
    with worker_process(runs_db, [*APP, "-P", "solo"], env) as worker:
        wait_until(lambda: not worker.alive(), timeout=60, what="the worker to die in the task")
    assert scalar(runs_db, VICTIM_RUNS) == 1
    # A supervisor starts it again; the unacked message comes back when its lease runs out.
    with worker_process(runs_db, [*APP, "-P", "solo"], env):
        _assert_once(runs_app, runs_db, result)
