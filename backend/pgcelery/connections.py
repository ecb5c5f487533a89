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
_POOLS: dict[tuple[int, str], ConnectionPool[Any]] = {}


def pool(conninfo: str, max_size: int = 10) -> ConnectionPool[Any]:
    """The process's pool for ``conninfo`` (opened lazily; connections made on demand)."""
    key = (os.getpid(), conninfo)
    with _LOCK:
        found = _POOLS.get(key)
        if found is None:
            found = _POOLS[key] = ConnectionPool(
                conninfo,
                min_size=0,
                max_size=max_size,
                kwargs={"autocommit": True},
                # A broken connection is noticed when used and replaced; no ping per checkout.
                check=None,
                open=True,
                name="pgcelery",
            )
        return found


def reset(conninfo: str) -> None:
    """Drop the process's pool for ``conninfo`` (after a connection error)."""
    with _LOCK:
        found = _POOLS.pop((os.getpid(), conninfo), None)
    if found is not None:
        found.close(timeout=0)
