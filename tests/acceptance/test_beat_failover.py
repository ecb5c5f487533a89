"""Two beat processes, one leader killed: the other takes over and every run fires once."""

from __future__ import annotations

import signal
from contextlib import ExitStack

import psycopg
import pytest

from pgcelery.scheduling.beat import leader_lock_key
from tests.support.broker_tasks import RUNS_TABLE
from tests.support.postgres import libpq
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, worker_process

BEAT = ["celery", "-A", "tests.support.beat_app", "beat", "-S", "pgcelery.beat:PgScheduler"]
BEAT += ["-l", "INFO"]
WORKER = ["celery", "-A", "tests.support.app", "worker", "-P", "solo", "-c", "1", "-l", "WARNING"]
EVERY_SECOND = "tests.every_second"  # the entry tests.support.beat_app adds
ENV = {"PGCELERY_BEAT_STANDBY_INTERVAL": "0.5", "PGCELERY_LOG_LEVEL": "INFO"}


def _scalar(url: str, query: str, params: tuple[object, ...] = ()) -> object:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _runs(url: str) -> int:
    return int(str(_scalar(url, "SELECT count(*) FROM test_runs WHERE label = 'beat'")))


def _leader_pid(url: str) -> int | None:
    """The OS pid of the beat process whose session holds the leader lock."""
    key = leader_lock_key()
    name = _scalar(
        url,
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted"
        " AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
        (key,),
    )
    return int(str(name).rsplit(":", 1)[1]) if name else None


@pytest.fixture
def runs_db(database_url: str) -> str:
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        conn.execute(RUNS_TABLE)
    return database_url


def test_killed_leader_is_replaced_and_each_run_fires_once(runs_db: str) -> None:
    with ExitStack() as stack:
        stack.enter_context(worker_process(runs_db, WORKER))
        beats: dict[int, WorkerProcess] = {}
        for _ in range(2):
            beat = stack.enter_context(worker_process(runs_db, BEAT, ENV))
            beats[beat.pid] = beat
        wait_until(lambda: _runs(runs_db) >= 3, timeout=90, what="three runs")
        leader = wait_until(lambda: _leader_pid(runs_db), timeout=30, what="a leader")
        assert leader in beats, f"lock held by {leader}, not a beat: {beats}"

        beats[leader].signal(signal.SIGKILL)
        beats[leader].proc.wait(10)
        at_kill = _runs(runs_db)
        (standby,) = (pid for pid in beats if pid != leader)
        wait_until(lambda: _leader_pid(runs_db) == standby, timeout=60, what="the standby leads")
        wait_until(lambda: _runs(runs_db) >= at_kill + 3, timeout=90, what="runs after failover")

        beats[standby].stop()
        sent = int(
            str(
                _scalar(
                    runs_db,
                    "SELECT total_run_count FROM pgcelery_beat WHERE name = %s",
                    (EVERY_SECOND,),
                )
            )
        )
        wait_until(lambda: _runs(runs_db) >= sent, timeout=60, what="every sent run to finish")
        output = beats[standby].output()

    assert "pgcelery.beat.leader_elected" in output
    # Each run's task id is derived from the run it follows: a run sent twice repeats an id.
    distinct = _scalar(runs_db, "SELECT count(DISTINCT task_id) FROM test_runs WHERE label='beat'")
    assert _runs(runs_db) == sent
    assert distinct == sent
    assert _scalar(runs_db, "SELECT count(*) FROM kombu_message") == 0
