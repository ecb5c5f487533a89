"""What pgcelery opens per asyncio event loop, and :func:`aclose` to close it.

psycopg's async connections belong to the loop that opened them, so the async API
(``aget``, ``asend``, ``send_in_transaction`` on async connections, ``db.async_connection``)
keeps its connections per loop: the shared ``LISTEN`` connection and reader of result waiters,
the publishing connections, the tenant-aware pool. Each registers a closer here when it first
opens something on a loop; ``await pgcelery.aclose()`` (at the end of an ASGI lifespan, say)
runs the closers of the running loop.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Closer = Callable[[], Awaitable[None]]

_STATE: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[object, object]] = (
    weakref.WeakKeyDictionary()
)
_CLOSERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Closer]] = (
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
    return found[key]  # type: ignore[return-value]


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
