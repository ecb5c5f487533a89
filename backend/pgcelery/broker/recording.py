"""Publishing without writing: the message rows a publish would insert, kept for the caller.

While :func:`recording` is active, the channel builds each message exactly as it would publish
it (Celery's and kombu's own serialization, routing, priority and ``eta``) but appends the
``INSERT`` it would run to the record instead of running it. The async publisher
(:mod:`pgcelery.broker.async_publish`) then runs those statements on an async connection, so the
same SQL reaches ``kombu_message`` without blocking an event loop on a socket.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Insert:
    """One message row, as the channel would have inserted it."""

    #: The libpq URL of the broker's database.
    conninfo: str
    statement: str
    values: tuple[Any, ...]
    #: The channel's statement timeout in seconds (0: none).
    statement_timeout: float


_RECORD: contextvars.ContextVar[list[Insert] | None] = contextvars.ContextVar(
    "pgcelery_publish_record", default=None
)


@contextmanager
def recording() -> Iterator[list[Insert]]:
    """Within the block, publishing on this context appends to the yielded list instead."""
    found: list[Insert] = []
    token = _RECORD.set(found)
    try:
        yield found
    finally:
        _RECORD.reset(token)


def record() -> list[Insert] | None:
    """The active record, if a publish now should be recorded rather than run."""
    return _RECORD.get()
