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

#: Server settings of the connections that run pgcelery's queue statements. Each statement
#: finds its rows through an index, but the plan psycopg prepares after five runs is kept for
#: the session, made from the table's size at that moment: a queue table planned while it was
#: small (or never analyzed: autovacuum off, or behind a burst) kept sequential scans while
#: dead rows piled up, 2,000 buffers a claim instead of 30.
INDEX_PLANS = {"enable_seqscan": "off"}

_LOCK = threading.Lock()
_POOLS: dict[tuple[int, str, bool, bool], ConnectionPool[Any]] = {}


def connect_kwargs(transaction_pooling: bool, **settings: str) -> dict[str, Any]:
    """psycopg connect arguments: server ``settings`` as startup options, or, behind PgBouncer in
    transaction pooling mode, neither those (it refuses the ``options`` startup parameter) nor
    server-side prepared statements (the next transaction may run on another server
    connection, where the statement was never prepared)."""
    if transaction_pooling:
        return {"autocommit": True, "prepare_threshold": None}
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return {"autocommit": True, "options": options}


def pool(
    conninfo: str,
    max_size: int = 10,
    async_commit: bool = False,
    transaction_pooling: bool = False,
) -> ConnectionPool[Any]:
    """The process's pool for ``conninfo`` (opened lazily; connections made on demand).

    ``async_commit`` pools commit without waiting for the WAL flush: only for writes whose loss
    in a server crash makes a task run again rather than disappear (results, acks).
    ``transaction_pooling``: the database is behind PgBouncer in transaction pooling mode
    (pgcelery's poll-only mode, ``PGCELERY_LISTEN=false``), see :func:`connect_kwargs`.
    """
    key = (os.getpid(), conninfo, async_commit, transaction_pooling)
    with _LOCK:
        found = _POOLS.get(key)
        if found is None:
            server = dict(INDEX_PLANS)
            if async_commit:
                server["synchronous_commit"] = "off"
            found = _POOLS[key] = ConnectionPool(
                conninfo,
                min_size=0,
                max_size=max_size,
                kwargs=connect_kwargs(transaction_pooling, **server),
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
        # In the background: closing waits for the pool's worker threads, and a result store
        # that failed must not wait for that (nor log a warning per thread, as timeout=0 does).
        threading.Thread(target=stale.close, name="pgcelery-pool-close", daemon=True).start()
