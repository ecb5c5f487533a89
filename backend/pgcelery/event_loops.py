"""What pgcelery opens per asyncio event loop, and :func:`aclose` to close it.

psycopg's async connections belong to the loop that opened them, so the async API
(``aget``, ``asend``, ``send_in_transaction`` on async connections, ``db.async_connection``)
keeps its connections per loop: the shared ``LISTEN`` connection and reader of result waiters,
the publishing connections, the tenant-aware pool. Each registers a closer here when it first
opens something on a loop; ``await pgcelery.aclose()`` (at the end of an ASGI lifespan, say)
runs the closers of the running loop; a loop ended by ``asyncio.run`` runs them too.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg

log = logging.getLogger(__name__)

T = TypeVar("T")
Closer = Callable[[], Awaitable[None]]

_STATE: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[object, object]] = (
    weakref.WeakKeyDictionary()
)
_CLOSERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Closer]] = (
    weakref.WeakKeyDictionary()
)
_GUARDS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


def per_loop(key: object, make: Callable[[], T], closer: Callable[[T], Closer] | None = None) -> T:
    """The running loop's object under ``key``, made by ``make()`` on first use.

    ``closer(obj)`` gives the coroutine function :func:`aclose` awaits to close it.
    """
    loop = asyncio.get_running_loop()
    found = _STATE.setdefault(loop, {})
    if key not in found:
        made = found[key] = make()
        if closer is not None:
            _CLOSERS.setdefault(loop, []).append(closer(made))
            _guard(loop)
    return found[key]  # type: ignore[return-value]


def _guard(loop: asyncio.AbstractEventLoop) -> None:
    """A task that closes the loop's connections when it is cancelled: ``asyncio.run`` (and
    so uvicorn) cancels every task left when its main coroutine ends, so a service that never
    calls :func:`aclose` still closes them, instead of leaving them to the garbage collector."""
    guard = _GUARDS.get(loop)
    if guard is None or guard.done():
        _GUARDS[loop] = loop.create_task(_close_when_cancelled(), name="pgcelery-loop-guard")


async def _close_when_cancelled() -> None:
    try:
        await asyncio.get_running_loop().create_future()  # never done
    except asyncio.CancelledError:
        await aclose()
        raise


async def aclose() -> None:
    """Close every connection pgcelery's async API opened on the running loop."""
    loop = asyncio.get_running_loop()
    closers = _CLOSERS.pop(loop, [])
    _STATE.pop(loop, None)
    for close in closers:
        try:
            await close()
        except Exception:  # closing the rest matters more than one failure
            log.warning("pgcelery.aclose.failed", exc_info=True)


class LoopConnections:
    """Up to ``size`` psycopg async connections of one loop to one database, one user at a time.

    A connection comes back idle or is closed: one left in a transaction, or broken, never
    goes back to the set.
    """

    def __init__(self, conninfo: str, size: int, **kwargs: Any) -> None:
        self._conninfo = conninfo
        self._kwargs = kwargs
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(size)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, **self._kwargs)
            try:
                yield conn
            finally:
                if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    await conn.close()
                else:
                    self._idle.append(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
