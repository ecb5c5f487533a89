"""Coroutines as Celery tasks, on every pool, without event-loop leaks.

Celery 5 runs task bodies synchronously. The two usual shortcuts break on real workers:
``asyncio.get_event_loop().run_until_complete(...)`` keeps one loop per thread alive between
tasks (state bound to it leaks into the next task, and a loop inherited through ``fork`` is
unusable in a prefork child), and ``asyncio.run`` refuses to start when the calling thread
already runs a loop ("cannot be called from a running event loop"). :func:`run_async` gives
each call its own loop, closes it afterwards and leaves no loop set on the thread; when the
thread already runs a loop it runs the coroutine on a short-lived helper thread instead::

    from pgcelery.tasks.async_tasks import async_task

    @async_task(name="reports.fetch", **retry_policy(TimeoutError))
    async def fetch(url: str) -> int:
        async with httpx.AsyncClient() as client:
            return (await client.get(url)).status_code

Create loop-bound resources (async clients, async engines, connection pools) inside the
coroutine, or per call: a loop is never reused, so a resource cached across tasks would be
bound to a closed loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from celery import shared_task

from pgcelery.exceptions import ConfigurationError

T = TypeVar("T")


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion on a fresh event loop and return its result.

    The loop is closed afterwards, after cancelling what the coroutine left running and
    finishing async generators and the default executor (``asyncio.run`` semantics). Context
    variables (tenant, correlation id) are visible inside the coroutine.
    """
    if not isinstance(coroutine, Coroutine):
        raise TypeError(f"run_async() needs a coroutine, got {type(coroutine).__name__}")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # Called from code that runs a loop on this thread (an eager call from async code, say):
    # that loop cannot be re-entered, so the coroutine gets its own loop on a helper thread.
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgcelery-async") as helper:
        return helper.submit(context.run, asyncio.run, coroutine).result()


def async_task(
    function: Callable[..., Coroutine[Any, Any, Any]] | None = None,
    *,
    app: Any = None,
    **options: Any,
) -> Any:
    """Register an ``async def`` as a Celery task that runs through :func:`run_async`.

    Use bare (``@async_task``) or with Celery task options (``@async_task(name=..., bind=True,
    **retry_policy(...))``). Without ``app`` the task is a ``shared_task`` (bound to every
    app, like pgcelery's built-in tasks); with ``app`` it is registered on that app only.
    """

    def register(coroutine_function: Callable[..., Coroutine[Any, Any, Any]]) -> Any:
        if not inspect.iscoroutinefunction(coroutine_function):
            raise ConfigurationError(
                f"@async_task needs an async def function; {coroutine_function!r} is not one "
                "(use @shared_task for a plain function)"
            )

        @functools.wraps(coroutine_function)
        def run(*args: Any, **kwargs: Any) -> Any:
            return run_async(coroutine_function(*args, **kwargs))

        # Celery checks call arguments against the task function's signature: give it the
        # coroutine function's, not the wrapper's (*args, **kwargs).
        run.__signature__ = inspect.signature(coroutine_function)  # type: ignore[attr-defined]

        decorator = app.task(**options) if app is not None else shared_task(**options)
        return decorator(run)

    return register if function is None else register(function)
