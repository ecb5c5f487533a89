"""Unique tasks: one message per (task, key) while pending, scheduled or running, enforced by
the database across processes and transactions."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest
from celery import Celery

from pgcelery import send_in_transaction
from pgcelery.exceptions import InvalidUniqueOption
from tests.support import postgres
from tests.support.broker_tasks import record_run
from tests.support.waiting import wait_until
from tests.support.workers import solo_worker


def _messages(url: str, key: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(postgres.libpq(url), autocommit=True) as conn:
        return conn.execute(
            "SELECT payload::jsonb #>> '{headers,id}', unique_task, visible_at > now()"
            " FROM kombu_message WHERE unique_key = %s",
            (key,),
        ).fetchall()


def _runs(url: str, label: str) -> list[str]:
    with psycopg.connect(postgres.libpq(url), autocommit=True) as conn:
        rows = conn.execute("SELECT task_id FROM test_runs WHERE label = %s", (label,))
        return [r[0] for r in rows]


def test_twenty_threads_in_five_processes_send_one_task(runs_db: str, runs_app: Celery) -> None:
    start_at = time.time() + 8.0  # every process imported and connected by then
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.unique_sender",
                runs_db,
                "invoice:42",
                str(start_at),
                "20",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    ids = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        ids.extend(out.split())
    assert len(ids) == 100
    assert len(set(ids)) == 1, "every send must get the first task's id"
    assert [row[0] for row in _messages(runs_db, "invoice:42")] == ids[:1]
    with solo_worker(runs_app):
        assert runs_app.AsyncResult(ids[0]).get(timeout=60) == "unique"
        # Finished: the key is free again, and a new send runs.
        again = wait_until(
            lambda: (
                (r := record_run.apply_async(("unique",), unique_key="invoice:42")).id != ids[0]
                and r
            ),
            timeout=30,
        )
        assert again.get(timeout=60) == "unique"
    assert sorted(_runs(runs_db, "unique")) == sorted([ids[0], again.id])


def test_unique_for_keeps_the_key_taken_after_the_task_finished(
    runs_db: str, runs_app: Celery
) -> None:
    with solo_worker(runs_app):
        first = record_run.apply_async(("held",), unique_key="k", unique_for=5)
        first.get(timeout=60)
        finished = time.monotonic()
        blocked = record_run.apply_async(("held",), unique_key="k", unique_for=5)
        assert blocked.id == first.id
        fresh = wait_until(
            lambda: (r := record_run.apply_async(("held",), unique_key="k")).id != first.id and r,
            timeout=60,
            interval=0.2,
        )
        assert time.monotonic() - finished >= 4.5
        fresh.get(timeout=60)
    assert sorted(_runs(runs_db, "held")) == sorted([first.id, fresh.id])


def test_replace_mode_rewrites_the_pending_duplicate(runs_db: str, runs_app: Celery) -> None:
    first = record_run.apply_async(("old",), unique_key="debounce", countdown=3600)
    second = record_run.apply_async(
        ("new",), unique_key="debounce", unique_mode="replace", countdown=0
    )
    assert second.id == first.id
    rows = _messages(runs_db, "debounce")
    assert rows == [(first.id, "tests.record_run", False)], "replaced: one message, due now"
    with solo_worker(runs_app):
        assert first.get(timeout=60) == "new"


def test_a_rolled_back_send_frees_the_key(runs_db: str, runs_app: Celery) -> None:
    with psycopg.connect(postgres.libpq(runs_db)) as conn:
        sent = send_in_transaction(conn, record_run.s("tx"), unique_key="tx-key")
        assert _messages(runs_db, "tx-key") == []  # not committed yet
        conn.rollback()
    again = record_run.apply_async(("tx",), unique_key="tx-key")
    assert again.id != sent.id
    assert [row[0] for row in _messages(runs_db, "tx-key")] == [again.id]


def test_a_task_declares_its_key(runs_db: str, runs_app: Celery) -> None:
    @runs_app.task(name="tests.unique_echo", unique_key=lambda label, n=0: f"echo:{label}")
    def unique_echo(label: str, n: int = 0) -> int:
        return n

    first = unique_echo.delay("a", n=1)
    assert unique_echo.delay("a", n=2).id == first.id
    assert unique_echo.delay("b", n=3).id != first.id
    assert unique_echo.apply_async(("a",), unique_key="other").id != first.id


def test_sends_without_a_key_are_not_unique(runs_db: str, runs_app: Celery) -> None:
    ids = {record_run.delay("plain").id for _ in range(3)}
    assert len(ids) == 3


@pytest.mark.parametrize(
    "options",
    [
        {"unique_key": ""},
        {"unique_key": "k", "unique_for": -1},
        {"unique_key": "k", "unique_mode": "x"},
    ],
)
def test_bad_options_are_named_errors(runs_app: Celery, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidUniqueOption):
        record_run.apply_async(("bad",), **options)


def test_a_dead_workers_task_keeps_its_key_and_runs_once(runs_db: str, runs_app: Celery) -> None:
    first = record_run.apply_async(("orphan",), unique_key="orphan")
    # As if a worker claimed it and was SIGKILLed mid-task: leased, never acked.
    with psycopg.connect(postgres.libpq(runs_db), autocommit=True) as conn:
        conn.execute(
            "UPDATE kombu_message SET lease_token = gen_random_uuid(), deliveries = 1,"
            " visible_at = now() + interval '2 seconds'"
        )
    assert record_run.apply_async(("orphan",), unique_key="orphan").id == first.id
    with solo_worker(runs_app):
        assert first.get(timeout=60) == "orphan"  # delivered again once the lease ran out
    assert _runs(runs_db, "orphan") == [first.id]
