"""One beat leader at a time: a leader that loses its session, or stalls, stops sending.

Two real ``celery beat`` processes and a worker against a real PostgreSQL. Every committed send
is recorded by a trigger with the session that made it and whether that session held the leader
lock (tests.support.beat), so "two leaders" is a fact in the database, not a guess from logs.
"""

from __future__ import annotations

import signal
from contextlib import ExitStack

import pytest

from tests.support.beat import (
    BEAT,
    WORKER,
    leader_pid,
    record_sends,
    runs,
    scalar,
    sends,
)
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, worker_process

STEPPED_DOWN = "pgcelery.beat.stepped_down"
LEASE = 3.0


@pytest.fixture
def beat_db(database_url: str) -> str:
    record_sends(database_url)
    return database_url


def _assert_one_leader_and_each_run_once(url: str) -> None:
    """Every send came from the lock holder, no run was sent twice, the worker ran each."""
    total = sends(url)
    without_lock = scalar(url, "SELECT count(*) FROM test_sends WHERE NOT held_lock")
    distinct = scalar(url, "SELECT count(DISTINCT task_id) FROM test_sends")
    assert without_lock == 0, f"{without_lock} of {total} runs sent by a session without the lock"
    assert distinct == total, f"{total} sends of {distinct} runs"
    wait_until(lambda: runs(url) >= total, timeout=60, what="every sent run to finish")
    assert runs(url) == total
    assert scalar(url, "SELECT count(DISTINCT task_id) FROM test_runs") == total


def _start(stack: ExitStack, url: str, env: dict[str, str]) -> dict[int, WorkerProcess]:
    stack.enter_context(worker_process(url, WORKER))
    beats: dict[int, WorkerProcess] = {}
    for _ in range(2):
        beat = stack.enter_context(worker_process(url, BEAT, env))
        beats[beat.pid] = beat
    return beats


def test_leader_whose_session_is_terminated_in_apply_async_steps_down(beat_db: str) -> None:
    env = {
        "PGCELERY_BEAT_STANDBY_INTERVAL": "0.5",
        "PGCELERY_LOG_LEVEL": "INFO",
        "TEST_BEAT_TERMINATE_PUBLISHES": "2",
    }
    with ExitStack() as stack:
        beats = _start(stack, beat_db, env)

        def terminations() -> int:
            return sum(b.output().count("test.terminated_own_session") for b in beats.values())

        wait_until(lambda: terminations() >= 2, timeout=60, what="two sessions terminated")
        at = sends(beat_db)
        wait_until(lambda: sends(beat_db) >= at + 4, timeout=60, what="runs after the cuts")
        for beat in beats.values():
            beat.stop()
        outputs = [beat.output() for beat in beats.values()]

    _assert_one_leader_and_each_run_once(beat_db)
    for output in outputs:
        cut = output.count("test.terminated_own_session")
        assert output.count(STEPPED_DOWN) >= cut, output[-4000:]


def test_stalled_leader_loses_leadership_within_the_lease(beat_db: str) -> None:
    env = {
        "PGCELERY_BEAT_STANDBY_INTERVAL": "0.5",
        "PGCELERY_BEAT_LEASE": str(LEASE),
        "PGCELERY_LOG_LEVEL": "INFO",
    }
    with ExitStack() as stack:
        beats = _start(stack, beat_db, env)
        wait_until(lambda: sends(beat_db) >= 2, timeout=60, what="two runs sent")
        stalled = wait_until(lambda: leader_pid(beat_db), timeout=30, what="a leader")
        (standby,) = (pid for pid in beats if pid != stalled)

        beats[stalled].signal(signal.SIGSTOP)
        # Registered after the process contexts, so it runs before they stop the processes.
        stack.callback(beats[stalled].signal, signal.SIGCONT)
        stopped_at = scalar(beat_db, "SELECT clock_timestamp()")
        wait_until(
            lambda: leader_pid(beat_db) == standby,
            timeout=LEASE + 15,
            what="the standby to take over from the stalled leader",
        )
        at = sends(beat_db, standby)
        wait_until(lambda: sends(beat_db, standby) >= at + 2, timeout=30, what="the new leader")

        beats[stalled].signal(signal.SIGCONT)
        wait_until(
            lambda: STEPPED_DOWN in beats[stalled].output(),
            timeout=30,
            what="the stalled leader to step down after SIGCONT",
        )
        at = sends(beat_db, standby)
        wait_until(lambda: sends(beat_db, standby) >= at + 2, timeout=30, what="runs after it")
        for beat in beats.values():
            beat.stop()

    late = scalar(
        beat_db,
        "SELECT count(*) FROM test_sends WHERE application_name LIKE %s AND at > %s",
        (f"pgcelery-beat:%:{stalled}", stopped_at),
    )
    assert late == 0, f"the stalled leader sent {late} runs after it was stopped"
    _assert_one_leader_and_each_run_once(beat_db)
