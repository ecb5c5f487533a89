"""Tasks the tests run on real workers (imported by in-process and subprocess workers)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from celery import Task, shared_task

from pgcelery.tasks.async_tasks import async_task, run_async
from pgcelery.tasks.retries import retry_policy


@shared_task(name="tests.add")
def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="tests.sleep")
def sleep(seconds: float, marker: str | None = None) -> float:
    time.sleep(seconds)
    return seconds


@shared_task(name="tests.fail")
def fail(message: str) -> None:
    raise RuntimeError(message)


@shared_task(name="tests.pid")
def pid() -> int:
    return os.getpid()


@shared_task(name="tests.echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


# -- retries (pgcelery.retries) ---------------------------------------------------------------


class FlakyError(Exception):
    """A failure the retry tests retry."""


def _count_run(counter: str) -> int:
    """Record one run in the file ``counter``; returns how many runs it now holds."""
    with open(counter, "a+") as runs:
        runs.write("run\n")
        runs.seek(0)
        return len(runs.read().splitlines())


@shared_task(
    name="tests.flaky", **retry_policy(FlakyError, max_retries=3, backoff=1, backoff_max=1)
)
def flaky(counter: str, failures: int, error: str = "flaky") -> int:
    """Fail the first ``failures`` runs (``error="value"``: with a ValueError, not retried)."""
    runs = _count_run(counter)
    if runs <= failures:
        raise FlakyError(f"run {runs} fails") if error == "flaky" else ValueError(f"run {runs}")
    return runs


@shared_task(
    name="tests.always_flaky", **retry_policy(FlakyError, max_retries=2, backoff=1, backoff_max=1)
)
def always_flaky(counter: str) -> None:
    raise FlakyError(f"run {_count_run(counter)} fails")


# -- async tasks (pgcelery.async_tasks) -------------------------------------------------------

_LOOPS: list[asyncio.AbstractEventLoop] = []
_LOOPS_LOCK = threading.Lock()


def thread_event_loop() -> asyncio.AbstractEventLoop | None:
    """The loop set on the calling thread, if any, without creating one as a side effect."""
    local = asyncio.get_event_loop_policy()._local  # type: ignore[attr-defined]
    loop: asyncio.AbstractEventLoop | None = local._loop
    return loop


def _leaked_loops() -> int:
    """Loops of earlier runs in this process that are neither running nor closed."""
    with _LOOPS_LOCK:
        return sum(1 for loop in _LOOPS if not loop.is_closed() and not loop.is_running())


@async_task(name="tests.async_probe")
async def async_probe(pause: float = 0.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    leaked = _leaked_loops()
    with _LOOPS_LOCK:
        fresh = all(seen is not loop for seen in _LOOPS)
        _LOOPS.append(loop)
    await asyncio.sleep(pause)
    return {"pid": os.getpid(), "fresh": fresh, "leaked_before": leaked}


@shared_task(name="tests.loop_state")
def loop_state() -> dict[str, Any]:
    """What an async task may have left behind in this worker process and thread."""
    with _LOOPS_LOCK:
        seen = len(_LOOPS)
    return {
        "pid": os.getpid(),
        "seen": seen,
        "leaked": _leaked_loops(),
        "thread_loop_set": thread_event_loop() is not None,
    }


@shared_task(name="tests.run_async_twice")
def run_async_twice() -> dict[str, Any]:
    """Two run_async calls in one task: separate loops, each closed and unset afterwards."""

    async def current() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    first = run_async(current())
    unset_between = thread_event_loop() is None
    second = run_async(current())
    return {
        "distinct": first is not second,
        "closed": first.is_closed() and second.is_closed(),
        "unset": unset_between and thread_event_loop() is None,
    }


@shared_task(name="tests.progress_steps", bind=True)
def progress_steps(self: Task, total: int, gate: str) -> int:
    """Report each step, then wait for the test to create ``<gate>/<step>`` before going on."""
    from pathlib import Path

    from pgcelery.observability.progress import report_progress

    for step in range(1, total + 1):
        report_progress(self, step, total, stage=f"step {step}")
        deadline = time.monotonic() + 120
        while not (Path(gate) / str(step)).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"nobody opened gate {step}")
            time.sleep(0.02)
    return total
