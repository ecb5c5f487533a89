"""``await pgcelery.aget(...)`` and ``await pgcelery.asend(...)`` against real workers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import psycopg
import pytest
from celery import Celery, group
from celery.contrib.testing.worker import TestWorkController
from celery.exceptions import TimeoutError as CeleryTimeoutError

from pgcelery import aget, asend, create_app, db
from pgcelery.exceptions import ConfigurationError
from pgcelery.settings import Settings
from tests.support import postgres
from tests.support.event_loop import run
from tests.support.waiting import wait_until
from tests.support.workers import solo_worker, worker_process

T = TypeVar("T")


class Ticker:
    """A coroutine that ticks every 10 ms: the longest gap between ticks is how long the event
    loop was blocked."""

    def __init__(self) -> None:
        self.ticks = 0
        self.longest_gap = 0.0
        self.most_threads = threading.active_count()
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            self.ticks += 1
            self.most_threads = max(self.most_threads, threading.active_count())
            last = now

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.fixture
def subprocess_worker(database_url: str) -> Iterator[Celery]:
    """A client app and a real worker process (solo pool) on the test database."""
    client = create_app(
        settings=Settings(DATABASE_URL=database_url, PGCELERY_METRICS_ENABLED=False)
    )
    argv = ["celery", "-A", "tests.support.app", "worker", "-P", "solo", "--loglevel=WARNING"]
    with worker_process(database_url, argv=argv):
        yield client
    client.close()


def test_a_thousand_concurrent_awaits_in_one_event_loop(subprocess_worker: Celery) -> None:
    app = subprocess_worker
    add = app.signature("tests.add")

    async def main() -> tuple[list[Any], Ticker]:
        with Ticker() as ticker:
            results = await asyncio.gather(*(asend(add.clone(args=(i, 1))) for i in range(1000)))
            values = await asyncio.gather(*(aget(r, timeout=180) for r in results))
        return values, ticker

    threads_before = threading.active_count()
    values, ticker = run(main)
    assert values == [i + 1 for i in range(1000)]
    # No thread per waiter (the first publish may use one of asyncio's executor threads).
    assert ticker.most_threads <= threads_before + 3, (threads_before, ticker.most_threads)
    # The loop kept running while the tasks were published and awaited: no call blocked it for
    # as long as a round trip to a worker (a blocking get() would stall it for the whole run).
    assert ticker.ticks > 0
    assert ticker.longest_gap < 1.0, ticker.longest_gap


def test_the_loop_keeps_ticking_while_one_result_is_awaited(
    app: Celery, worker: TestWorkController
) -> None:
    async def main() -> tuple[float, Ticker]:
        result = await asend(app.signature("tests.sleep", args=(1.5,)))
        with Ticker() as ticker:
            value = await aget(result, timeout=60)
        return value, ticker

    value, ticker = run(main)
    assert value == 1.5
    # ~150 ticks in 1.5 s if the loop never stopped; a blocking wait would allow none.
    assert ticker.ticks >= 50, ticker.ticks


def test_a_failed_task_raises_its_exception(app: Celery, worker: TestWorkController) -> None:
    async def main() -> Any:
        result = await asend(app.signature("tests.fail", args=("boom",)))
        with pytest.raises(RuntimeError, match="boom"):
            await aget(result, timeout=60)
        return await aget(result, timeout=60, propagate=False)

    assert isinstance(run(main), RuntimeError)


def test_timeout_raises_celerys_timeout_error(app: Celery) -> None:
    async def main() -> float:
        result = await asend(app.signature("tests.add", args=(1, 2)))  # no worker runs it
        started = time.monotonic()
        with pytest.raises(CeleryTimeoutError):
            await aget(result, timeout=0.5)
        return time.monotonic() - started

    assert 0.5 <= run(main) < 5


def test_a_group_result_gives_its_values_in_order(app: Celery, worker: TestWorkController) -> None:
    async def main() -> list[Any]:
        result = await asend(group(app.signature("tests.add", args=(i, i)) for i in range(5)))
        return list(await aget(result, timeout=60))

    assert run(main) == [0, 2, 4, 6, 8]


def test_a_group_raises_its_first_failure(app: Celery, worker: TestWorkController) -> None:
    async def main() -> None:
        members = [app.signature("tests.add", args=(1, 1)), app.signature("tests.fail", ("no",))]
        result = await asend(group(members))
        with pytest.raises(RuntimeError, match="no"):
            await aget(result, timeout=60)

    run(main)


def test_asend_commits_before_it_returns(app: Celery, database_url: str) -> None:
    async def main() -> str:
        result = await asend(app.signature("tests.add", args=(2, 2)), priority=7)
        return str(result.id)

    task_id = run(main)
    with psycopg.connect(postgres.libpq(database_url)) as conn:
        row = conn.execute(
            "SELECT priority FROM kombu_message WHERE payload::jsonb->'headers'->>'id' = %s",
            (task_id,),
        ).fetchone()
    assert row is not None
    assert row[0] == 7


def test_a_result_already_stored_is_returned_at_once(
    app: Celery, worker: TestWorkController
) -> None:
    result = app.send_task("tests.add", args=(3, 4))
    assert result.get(timeout=60) == 7
    fresh = app.AsyncResult(result.id)

    async def main() -> Any:
        return await aget(fresh, timeout=5)

    assert run(main) == 7


def test_asend_refuses_an_app_on_another_broker() -> None:
    other = Celery("elsewhere", broker="memory://")

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="pgcelery's broker"):
            await asend(other.signature("tests.add", args=(1, 1)))

    run(main)
    other.close()


def test_aget_refuses_a_result_of_another_backend() -> None:
    other = Celery("elsewhere", broker="memory://", backend="cache+memory://")

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="result backend"):
            await aget(other.AsyncResult("some-id"), timeout=1)

    run(main)
    other.close()


def test_the_loop_keeps_ticking_while_a_publish_waits_on_the_database(
    app: Celery, database_url: str
) -> None:
    async def main() -> tuple[int, bool, int]:
        await asend(app.signature("tests.add", args=(0, 0)))  # the producer is connected
        locker = await psycopg.AsyncConnection.connect(postgres.libpq(database_url))
        await locker.execute("LOCK TABLE kombu_message IN EXCLUSIVE MODE")
        with Ticker() as ticker:
            sending = asyncio.ensure_future(asend(app.signature("tests.add", args=(1, 1))))
            await asyncio.sleep(1.0)
            waited = not sending.done()
            ticks_while_locked = ticker.ticks
            await locker.rollback()
            await locker.close()
            await sending
        with psycopg.connect(postgres.libpq(database_url)) as conn:
            row = conn.execute("SELECT count(*) FROM kombu_message").fetchone()
        return ticks_while_locked, waited, row[0] if row else 0

    ticks, waited, queued = run(main)
    assert waited  # the INSERT waited for the lock ...
    assert ticks >= 30, ticks  # ... and the loop ran on meanwhile (~100 ticks in 1 s)
    assert queued == 2


def test_a_loop_ended_without_aclose_closes_its_connections(
    app: Celery, settings: Settings, database_url: str
) -> None:
    def open_connections() -> int:
        with psycopg.connect(postgres.libpq(database_url)) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        return int(row[0]) if row else 0

    async def main() -> int:
        result = await asend(app.signature("tests.add", args=(1, 1)))  # no worker runs it
        with pytest.raises(CeleryTimeoutError):
            await aget(result, timeout=0.3)
        async with db.async_connection(settings) as conn:
            await conn.execute("SELECT 1")
        return open_connections()

    run(main)  # opens what stays open (the app's own producer connection), closes the rest
    before = open_connections()
    during = asyncio.run(main())  # no aclose(): asyncio.run's cancelling of leftover tasks
    assert during > before
    wait_until(lambda: open_connections() == before, what="the loop's connections closed")


def test_aget_polls_in_poll_only_mode(database_url: str) -> None:
    # PGCELERY_LISTEN=false (PgBouncer in transaction pooling mode): no LISTEN, reads every
    # interval instead.
    settings = Settings(
        DATABASE_URL=database_url,
        PGCELERY_METRICS_ENABLED=False,
        PGCELERY_PRUNE_INTERVAL=0,
        PGCELERY_LISTEN=False,
    )
    app = create_app("poll-only", include=["tests.support.tasks"], settings=settings)

    async def main() -> list[Any]:
        results = await asyncio.gather(
            *(asend(app.signature("tests.add", (i, i))) for i in range(20))
        )
        values = await asyncio.gather(*(aget(r, timeout=60, interval=0.1) for r in results))
        with psycopg.connect(postgres.libpq(database_url)) as conn:
            listening = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            ).fetchone()
        return [list(values), listening]

    with solo_worker(app):
        values, listening = run(main)
    app.close()
    assert values == [2 * i for i in range(20)]
    assert listening == (0,)
