"""Connection pools for pgcelery's own hot paths (result backend, maintenance), one per process.

psycopg's pool, with autocommit connections: every statement pgcelery runs on these is a
single-statement transaction, which saves the BEGIN/COMMIT round trips. Keyed by process id,
because a prefork child must never use connections it inherited from its parent.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from psycopg_pool import ConnectionPool

_LOCK = threading.Lock()
_POOLS: dict[tuple[int, str, bool], ConnectionPool[Any]] = {}


def pool(conninfo: str, max_size: int = 10, async_commit: bool = False) -> ConnectionPool[Any]:
    """The process's pool for ``conninfo`` (opened lazily; connections made on demand).

    ``async_commit`` pools commit without waiting for the WAL flush: only for writes whose loss
    in a server crash makes a task run again rather than disappear (results, acks).
    """
    key = (os.getpid(), conninfo, async_commit)
    with _LOCK:
        found = _POOLS.get(key)
        if found is None:
            found = _POOLS[key] = ConnectionPool(
                conninfo,
                min_size=0,
                max_size=max_size,
                kwargs={
                    "autocommit": True,
                    "options": "-c synchronous_commit=off" if async_commit else "",
                },
                # A broken connection is noticed when used and replaced; no ping per checkout.
                check=None,
                open=True,
                name="pgcelery",
            )
        return found


def reset(conninfo: str) -> None:
    """Drop the process's pool for ``conninfo`` (after a connection error)."""
    with _LOCK:
        found = [_POOLS.pop(key) for key in list(_POOLS) if key[:2] == (os.getpid(), conninfo)]
    for stale in found:
        stale.close(timeout=0)
