"""Awaitable results: ``await aget(result, timeout=...)`` in an event loop, woken by NOTIFY.

Per event loop and database, one async ``LISTEN`` connection wakes every waiter of the loop
(no thread per waiter: a waiter is an ``asyncio.Event``) and one reader connection reads the
rows of every waiter woken at once in a single ``WHERE task_id = ANY(...)``. The rows are
decoded as Celery decodes them (:meth:`PgBackend.meta_from_row`), and a ready result is put in
the ``AsyncResult``'s cache, so ``aget`` returns and raises exactly what ``get()`` does.

Waiters also read again every ``interval`` seconds (the fallback when a notification was
missed, and the only way behind PgBouncer, where ``LISTEN`` does not work). The listener is
closed :data:`IDLE_RELEASE` seconds after its last waiter left, or by ``pgcelery.aclose()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from time import monotonic
from typing import Any

import psycopg
from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, ResultSet
from psycopg import sql

from pgcelery import event_loops
from pgcelery.exceptions import ConfigurationError
from pgcelery.results.backend import PgBackend
from pgcelery.schema.names import RESULT_CHANNEL

log = logging.getLogger(__name__)

#: Seconds an idle LISTEN connection waits before a round trip proves the server is there.
IDLE_PROBE = 5.0
#: Seconds a loop keeps listening for results after its last waiter is done.
IDLE_RELEASE = 30.0
#: Seconds a new waiter waits for the LISTEN to be active before it relies on polling.
LISTEN_WAIT = 5.0

Row = tuple[Any, ...]


class _Waiters:
    """The waiters of one event loop on one database: a LISTEN task and a batching reader."""

    def __init__(self, conninfo: str, select_many: str, listen: bool) -> None:
        self._conninfo = conninfo
        self._select_many = select_many
        self._listen = listen
        self._events: dict[str, set[asyncio.Event]] = {}
        self._idle_since = monotonic()
        self._listening = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._queued: dict[str, list[asyncio.Future[Row | None]]] = {}
        self._reading: asyncio.Task[None] | None = None
        self._reader: psycopg.AsyncConnection[Any] | None = None

    # -- waking ------------------------------------------------------------------------------

    async def add(self, task_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(task_id, set()).add(event)
        if self._listen:
            if self._listener is None:
                self._listener = asyncio.get_running_loop().create_task(
                    self._run_listener(), name="pgcelery-result-listener"
                )
            if not self._listening.is_set():
                # Listening before the first read: no result can finish between the two unseen.
                # Not listening after LISTEN_WAIT: the database is unreachable for now; the
                # waiter polls and is woken when the listener reconnects.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._listening.wait(), LISTEN_WAIT)
        return event

    def remove(self, task_id: str, event: asyncio.Event) -> None:
        events = self._events.get(task_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[task_id]
        if not self._events:
            self._idle_since = monotonic()

    def _wake(self, task_id: str | None) -> None:
        if task_id is None:  # reconnected: anything may have finished meanwhile
            for events in self._events.values():
                for event in events:
                    event.set()
            return
        for event in self._events.get(task_id, ()):
            event.set()

    async def _run_listener(self) -> None:
        backoff, first = 0.2, True
        try:
            while True:
                try:
                    if await self._serve(first):
                        return
                    first = False
                except (psycopg.Error, OSError) as exc:
                    self._listening.clear()
                    first = False
                    log.warning(
                        "pgcelery.aget.listen_disconnected",
                        extra={"error": type(exc).__name__, "retry_in": backoff},
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            self._listening.clear()
            if self._listener is asyncio.current_task():
                self._listener = None

    async def _serve(self, first: bool) -> bool:
        """Listen until idle (True) or until the connection fails (raises)."""
        async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(RESULT_CHANNEL)))
            self._listening.set()
            if not first:
                self._wake(None)
            while True:
                async for note in conn.notifies(timeout=IDLE_PROBE):
                    self._wake(note.payload)
                if not self._events and monotonic() - self._idle_since >= IDLE_RELEASE:
                    # Nobody waits: stop listening (a later waiter starts a new listener).
                    self._listening.clear()
                    self._listener = None
                    return True
                await conn.execute("SELECT 1")  # a dead server is noticed without keepalives

    # -- reading -----------------------------------------------------------------------------

    async def read(self, task_id: str) -> Row | None:
        """The task's row (without its ``task_id``), read together with every other queued."""
        future: asyncio.Future[Row | None] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(task_id, []).append(future)
        if self._reading is None:
            self._reading = asyncio.get_running_loop().create_task(self._read_queued())
        return await future

    async def _read_queued(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, {}
                try:
                    rows = await self._read_rows(list(batch))
                except (psycopg.Error, OSError) as exc:
                    await self._drop_reader()
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for task_id, futures in batch.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(rows.get(task_id))
        finally:
            self._reading = None

    async def _read_rows(self, task_ids: list[str]) -> dict[str, Row]:
        if self._reader is None or self._reader.closed:
            self._reader = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, prepare_threshold=None if not self._listen else 5
            )
        cursor = await self._reader.execute(self._select_many, (task_ids,))
        return {str(row[0]): tuple(row[1:]) for row in await cursor.fetchall()}

    async def _drop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    async def close(self) -> None:
        listener = self._listener
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        await self._drop_reader()


def _backend(result: AsyncResult) -> PgBackend:
    backend = result.backend
    if not isinstance(backend, PgBackend):
        raise ConfigurationError(
            f"aget needs pgcelery's result backend (db+postgresql+psycopg://), but this result's "
            f"app uses {type(backend).__name__}: make the app with pgcelery.create_app."
        )
    return backend


def _waiters(backend: PgBackend) -> _Waiters:
    listen = not backend._transaction_pooling
    key = ("pgcelery.aget", backend._conninfo, backend.sql_select_many, listen)
    return event_loops.per_loop(
        key,
        lambda: _Waiters(backend._conninfo, backend.sql_select_many, listen),
        lambda waiters: waiters.close,
    )


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    remaining = deadline - monotonic()
    if remaining <= 0:
        raise CeleryTimeoutError("The operation timed out.")
    return remaining


async def _ready_meta(result: AsyncResult, deadline: float | None, interval: float) -> Any:
    """The task's meta once it is ready (SUCCESS, FAILURE or REVOKED)."""
    cached = result._cache or result.backend._cache.get(result.id)
    if cached:
        return cached
    backend = _backend(result)
    waiters = _waiters(backend)
    event = await waiters.add(result.id)
    try:
        while True:
            event.clear()
            try:
                meta = backend.meta_from_row(result.id, await waiters.read(result.id))
            except (psycopg.Error, OSError):
                # The database is unreachable for now: like get() with backend retries, wait.
                log.warning("pgcelery.aget.read_failed", extra={"task_id": result.id})
            else:
                if meta["status"] in states.READY_STATES:
                    return meta
            remaining = _remaining(deadline)
            wait = interval if remaining is None else min(interval, remaining)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait)
    finally:
        waiters.remove(result.id, event)


async def _raise_failed_parent(result: AsyncResult) -> None:
    """As ``get(follow_parents=True)``: a failed parent (an earlier link of a chain) raises."""
    node = result.parent
    parents = []
    while node is not None and isinstance(node, AsyncResult):
        parents.append(node)
        node = node.parent
    if not parents:
        return
    backend = _backend(result)
    waiters = _waiters(backend)
    rows = await asyncio.gather(*(waiters.read(parent.id) for parent in parents))
    for parent, row in zip(reversed(parents), reversed(rows), strict=True):
        meta = backend.meta_from_row(parent.id, row)
        if meta["status"] in states.PROPAGATE_STATES:
            parent._maybe_set_cache(meta)
            parent.maybe_throw()


async def _result_value(
    result: AsyncResult, deadline: float | None, propagate: bool, interval: float
) -> Any:
    if propagate:
        await _raise_failed_parent(result)
    result._maybe_set_cache(await _ready_meta(result, deadline, interval))
    result.maybe_throw(propagate=propagate)
    return result.result


async def _set_values(
    results: ResultSet, deadline: float | None, propagate: bool, interval: float
) -> list[Any]:
    # Every member waits at once (one batched read for all), then, as join() does, the values
    # come in order and the first failure in that order is raised.
    tasks = [
        asyncio.ensure_future(_value(member, deadline, propagate, interval))
        for member in results.results
    ]
    try:
        return [await task for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _value(result: Any, deadline: float | None, propagate: bool, interval: float) -> Any:
    if isinstance(result, ResultSet):
        return await _set_values(result, deadline, propagate, interval)
    if isinstance(result, AsyncResult):
        return await _result_value(result, deadline, propagate, interval)
    raise TypeError(f"aget needs an AsyncResult, GroupResult or ResultSet, not {result!r}")


async def aget(
    result: AsyncResult | ResultSet,
    timeout: float | None = None,
    propagate: bool = True,
    interval: float = 1.0,
) -> Any:
    """Wait for ``result`` without blocking the event loop, and return its value.

    Like ``result.get(timeout=..., propagate=...)``: a task that failed raises its exception
    (``propagate=False`` returns it instead), a group (``GroupResult``, ``ResultSet``) gives the
    list of its members' values in order, and ``celery.exceptions.TimeoutError`` is raised after
    ``timeout`` seconds. Woken by NOTIFY; ``interval`` is the polling fallback in seconds.
    """
    deadline = None if timeout is None else monotonic() + timeout
    return await _value(result, deadline, propagate, interval)
