"""Running a coroutine the way an ASGI server does: one event loop, the async API closed at
its end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pgcelery import aclose

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run(main())``, then ``await pgcelery.aclose()`` on the same loop."""

    async def wrapped() -> T:
        try:
            return await main()
        finally:
            await aclose()

    return asyncio.run(wrapped())
