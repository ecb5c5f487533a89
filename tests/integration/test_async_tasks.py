"""pgcelery.async_tasks on real workers of every pool: a fresh loop per run, none left behind."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from pgcelery import create_app
from pgcelery.exceptions import ConfigurationError
from pgcelery.settings import Settings
from pgcelery.tasks.async_tasks import async_task, run_async
from tests.support.tasks import thread_event_loop
from tests.support.workers import worker_process


def check_sequential_runs(app: Celery, count: int = 3, one_process: bool = True) -> list[Any]:
    """Run async probes one after another; each must get a loop of its own, none may leak.

    ``one_process=False``: the probes may have run in another prefork child than the check.
    """
    replies = [app.send_task("tests.async_probe").get(timeout=60) for _ in range(count)]
    assert all(reply["fresh"] for reply in replies), replies
    assert all(reply["leaked_before"] == 0 for reply in replies), replies
    state = app.send_task("tests.loop_state").get(timeout=60)
    if one_process:
        assert state["seen"] >= count, state
    assert state["leaked"] == 0, state
    assert state["thread_loop_set"] is False, state
    twice = app.send_task("tests.run_async_twice").get(timeout=60)
    assert twice == {"distinct": True, "closed": True, "unset": True}
    return replies


@pytest.fixture(params=["solo", "threads"])
def in_process_pool(request: pytest.FixtureRequest, app: Celery) -> Iterator[str]:
    with start_worker(
        app, pool=request.param, concurrency=2, perform_ping_check=False, shutdown_timeout=30
    ):
        yield str(request.param)


def test_async_tasks_in_solo_and_threads_pools(app: Celery, in_process_pool: str) -> None:
    check_sequential_runs(app)


def test_async_tasks_in_prefork_pool(database_url: str) -> None:
    client = create_app(settings=Settings(DATABASE_URL=database_url))
    argv = ["celery", "-A", "tests.support.app", "worker", "-P", "prefork", "-c", "2"]
    with worker_process(database_url, argv=[*argv, "--loglevel=INFO"]) as worker:
        replies = check_sequential_runs(client, one_process=False)
        assert worker.pid not in {reply["pid"] for reply in replies}
        # Concurrent probes keep both children busy, so each child runs several tasks.
        results = [client.send_task("tests.async_probe", args=[0.3]) for _ in range(4)]
        concurrent = [result.get(timeout=60) for result in results]
        assert all(r["fresh"] and r["leaked_before"] == 0 for r in concurrent), concurrent
        assert len({r["pid"] for r in concurrent}) == 2, concurrent
        # Both children have run async tasks now: neither may hold a loop afterwards.
        states = [client.send_task("tests.loop_state").get(timeout=60) for _ in range(4)]
        assert all(s["seen"] >= 1 for s in states), states
        assert all(s["leaked"] == 0 and not s["thread_loop_set"] for s in states), states
        assert worker.alive(), worker.output()
    assert worker.proc.returncode == 0, worker.output()


def test_run_async_inside_a_running_loop_uses_a_loop_of_its_own() -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")

    async def inner() -> tuple[asyncio.AbstractEventLoop, str]:
        return asyncio.get_running_loop(), marker.get()

    async def outer() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop, str]:
        marker.set("from the caller")
        # A synchronous call from async code, like a task called eagerly by an async service.
        loop, seen = run_async(inner())
        return asyncio.get_running_loop(), loop, seen

    outer_loop, inner_loop, seen = asyncio.run(outer())
    assert inner_loop is not outer_loop
    assert inner_loop.is_closed()
    assert seen == "from the caller"
    assert thread_event_loop() is None


def test_run_async_cancels_what_the_coroutine_left_running() -> None:
    leftover: list[asyncio.Task[None]] = []

    async def spawn() -> str:
        leftover.append(asyncio.get_running_loop().create_task(asyncio.sleep(3600)))
        return "done"

    assert run_async(spawn()) == "done"
    assert leftover[0].cancelled()


def test_run_async_refuses_what_is_not_a_coroutine() -> None:
    async def job() -> None:
        return None

    with pytest.raises(TypeError, match="needs a coroutine"):
        run_async(job)  # type: ignore[arg-type]


def test_async_task_refuses_a_plain_function(app: Celery) -> None:
    def plain() -> None:
        return None

    with pytest.raises(ConfigurationError, match="async def"):
        async_task(plain, app=app)  # type: ignore[arg-type]


def test_async_task_keeps_the_signature_for_argument_checks(app: Celery) -> None:
    @async_task(app=app, name="tests.async_add")
    async def add(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    assert add(2, 3) == 5
    with pytest.raises(TypeError):
        add.delay(1, 2, 3)
