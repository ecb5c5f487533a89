"""Two beat processes, one leader killed: the other takes over and every run fires once."""

from __future__ import annotations

import signal
from contextlib import ExitStack

import pytest

from tests.support.beat import (
    BEAT,
    EVERY_SECOND,
    WORKER,
    leader_pid,
    record_sends,
    runs,
    scalar,
)
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, worker_process

ENV = {"PGCELERY_BEAT_STANDBY_INTERVAL": "0.5", "PGCELERY_LOG_LEVEL": "INFO"}


@pytest.fixture
def runs_db(database_url: str) -> str:
    record_sends(database_url)
    return database_url


def test_killed_leader_is_replaced_and_each_run_fires_once(runs_db: str) -> None:
    with ExitStack() as stack:
        stack.enter_context(worker_process(runs_db, WORKER))
        beats: dict[int, WorkerProcess] = {}
        for _ in range(2):
            beat = stack.enter_context(worker_process(runs_db, BEAT, ENV))
            beats[beat.pid] = beat
        wait_until(lambda: runs(runs_db) >= 3, timeout=90, what="three runs")
        leader = wait_until(lambda: leader_pid(runs_db), timeout=30, what="a leader")
        assert leader in beats, f"lock held by {leader}, not a beat: {beats}"

        beats[leader].signal(signal.SIGKILL)
        beats[leader].proc.wait(10)
        at_kill = runs(runs_db)
        (standby,) = (pid for pid in beats if pid != leader)
        wait_until(lambda: leader_pid(runs_db) == standby, timeout=60, what="the standby leads")
        wait_until(lambda: runs(runs_db) >= at_kill + 3, timeout=90, what="runs after failover")

        beats[standby].stop()
        sent = int(
            str(
                scalar(
                    runs_db,
                    "SELECT total_run_count FROM pgcelery_beat WHERE name = %s",
                    (EVERY_SECOND,),
                )
            )
        )
        wait_until(lambda: runs(runs_db) >= sent, timeout=60, what="every sent run to finish")
        output = beats[standby].output()

    assert "pgcelery.beat.leader_elected" in output
    # Each run's task id is derived from the run it follows: a run sent twice repeats an id.
    distinct = scalar(runs_db, "SELECT count(DISTINCT task_id) FROM test_runs WHERE label='beat'")
    assert runs(runs_db) == sent
    assert distinct == sent
    assert scalar(runs_db, "SELECT count(*) FROM kombu_message") == 0
    assert scalar(runs_db, "SELECT count(*) FROM test_sends WHERE NOT held_lock") == 0
