"""Celery's remote control against real pgcelery worker processes: inspect, control, revoke."""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack
from typing import Any

import psycopg
from celery import Celery
from celery.result import AsyncResult

from tests.support.postgres import libpq
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, worker_process

APP = ["celery", "-A", "tests.support.app", "worker", "-l", "INFO", "--without-mingle"]


def _worker(stack: ExitStack, url: str, name: str, *pool: str) -> WorkerProcess:
    argv = [*APP, "-n", f"{name}@%h", *(pool or ("-P", "solo", "-c", "1"))]
    return stack.enter_context(worker_process(url, argv))


def _nodes(app: Celery, count: int) -> list[str]:
    def answered() -> list[str]:
        replies = app.control.ping(timeout=1.0, limit=count) or []
        found = sorted(name for reply in replies for name in reply)
        return found if len(found) == count else []

    return wait_until(answered, timeout=90, interval=0.2, what=f"{count} workers to answer ping")


def _runs(url: str, label: str) -> int:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("SELECT count(*) FROM test_runs WHERE label = %s", (label,)).fetchone()
        return int(row[0]) if row else 0


def _only(reply: dict[str, Any] | None, node: str) -> Any:
    assert reply is not None
    assert node in reply, reply
    return reply[node]


def test_two_workers_answer_inspect_and_obey_control(runs_app: Celery, database_url: str) -> None:
    app = runs_app
    with ExitStack() as stack:
        solo = _worker(stack, database_url, "solo")
        # A solo worker answers nothing while it runs a task: the prefork one (own queue) does.
        pre = _worker(stack, database_url, "pre", "-P", "prefork", "-c", "1", "-Q", "pre")
        nodes = _nodes(app, 2)
        solo_name, pre_name = sorted(nodes, key=lambda n: not n.startswith("solo@"))
        assert solo_name.startswith("solo@")
        assert pre_name.startswith("pre@")

        pings = app.control.inspect(timeout=1.0).ping()
        assert pings == {solo_name: {"ok": "pong"}, pre_name: {"ok": "pong"}}

        # Round trip of one ping answered by one worker, on an otherwise idle system.
        latencies = []
        for _ in range(7):
            started = time.perf_counter()
            assert app.control.ping([solo_name], timeout=2.0, limit=1)
            latencies.append(time.perf_counter() - started)
        print(f"ping round trip: median {statistics.median(latencies) * 1000:.1f} ms")
        assert statistics.median(latencies) < 0.1, latencies

        inspect = app.control.inspect([solo_name], timeout=2.0)
        assert "tests.add" in _only(inspect.registered(), solo_name)
        assert _only(inspect.stats(), solo_name)["pid"] == solo.pid
        assert _only(inspect.active(), solo_name) == []
        assert _only(inspect.reserved(), solo_name) == []

        running = app.send_task("tests.sleep", (3.0,), queue="pre")
        active = wait_until(
            lambda: (app.control.inspect([pre_name], timeout=1.0).active() or {}).get(pre_name),
            timeout=60,
            what="the sleeping task to show as active",
        )
        assert active[0]["id"] == running.id

        # add_consumer / cancel_consumer: the solo worker starts, then stops, taking "extra".
        replies = app.control.add_consumer("extra", destination=[solo_name], reply=True)
        assert replies
        assert "ok" in replies[0][solo_name]
        queues = _only(app.control.inspect([solo_name], timeout=2.0).active_queues(), solo_name)
        assert "extra" in {q["name"] for q in queues}
        assert app.send_task("tests.add", (2, 3), queue="extra").get(timeout=60) == 5
        app.control.cancel_consumer("extra", destination=[solo_name], reply=True)
        queues = _only(app.control.inspect([solo_name], timeout=2.0).active_queues(), solo_name)
        assert "extra" not in {q["name"] for q in queues}

        # pool_grow / pool_shrink on the prefork worker.
        def processes() -> int:
            return len(_only(app.control.inspect([pre_name], timeout=2.0).stats(), pre_name)
                       ["pool"]["processes"])  # fmt: skip

        assert processes() == 1
        app.control.pool_grow(1, destination=[pre_name], reply=True)
        wait_until(lambda: processes() == 2, timeout=60, what="the pool to grow")
        app.control.pool_shrink(1, destination=[pre_name], reply=True)
        wait_until(lambda: processes() == 1, timeout=60, what="the pool to shrink")
        running.get(timeout=60)

        # shutdown: the solo worker leaves, the prefork worker still answers.
        app.control.shutdown(destination=[solo_name])
        wait_until(lambda: not solo.alive(), timeout=60, what="the worker to shut down")
        assert app.control.inspect(timeout=1.0).ping() == {pre_name: {"ok": "pong"}}
        assert pre.alive()


def test_revoked_queued_tasks_never_run(runs_app: Celery, database_url: str) -> None:
    app = runs_app
    with ExitStack() as stack:
        _worker(stack, database_url, "one")
        _nodes(app, 1)
        blocker = app.send_task("tests.record_run", ("blocker",), {"sleep": 3.0})
        wait_until(
            lambda: AsyncResult(blocker.id, app=app).state == "STARTED",
            timeout=60,
            what="the blocking task to start",
        )
        by_id = app.send_task("tests.record_run", ("by-id",))
        by_result = app.send_task("tests.record_run", ("by-result",))
        stamped = app.signature("tests.record_run", ("stamped",))
        stamped.stamp(batch="nightly-42")
        stamped_result = stamped.apply_async()
        kept = app.send_task("tests.record_run", ("kept",))

        app.control.revoke(by_id.id)
        by_result.revoke()
        app.control.revoke_by_stamped_headers({"batch": "nightly-42"})

        assert kept.get(timeout=60) == "kept"
        assert blocker.get(timeout=60) == "blocker"
        for revoked in (by_id, by_result, stamped_result):
            wait_until(
                lambda r=revoked: AsyncResult(r.id, app=app).state == "REVOKED",
                timeout=30,
                what=f"{revoked.id} to be REVOKED",
            )
        assert _runs(database_url, "kept") == 1
        for label in ("by-id", "by-result", "stamped"):
            assert _runs(database_url, label) == 0, label
        with psycopg.connect(libpq(database_url)) as conn:
            left = conn.execute("SELECT count(*) FROM kombu_message").fetchone()
        assert left == (0,)
