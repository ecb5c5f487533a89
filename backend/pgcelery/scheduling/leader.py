"""The beat leader's database session: the leader lock, the lease that bounds a stall, the fence.

Leadership belongs to one database session, never to a process: the session that holds the
session-level advisory lock :func:`leader_lock_key`. A process that loses that session, for
whatever reason, is no longer the leader; a new session starts as a standby and must win the
lock again. Three things make that exclusive even when the leader is alive but stuck:

* **The lease.** The moment a session wins the lock it also sets ``idle_session_timeout`` and
  ``idle_in_transaction_session_timeout`` to ``PGCELERY_BEAT_LEASE``, in the same statement. The
  leader talks to the server at least every third of the lease; a leader that stops doing so
  (a hung or SIGSTOPped process, a paused VM, a cut network) has its session ended by the
  server itself once it has been silent for the lease, and the lock goes with it. No clock of
  any beat host takes part, and a standby needs no right to end other sessions.
* **The fence.** Each run is sent in a transaction that first checks, on the server, that its
  session still holds the lock (:meth:`LeaderSession.fence`). A session ended by the server
  cannot commit, so a stale leader that wakes up finds its session gone and sends nothing.
* **Stepping down.** Any error on the session ends it (:meth:`LeaderSession.close`).

``idle_session_timeout`` needs PostgreSQL 14: on 13 a leader stuck between statements keeps the
lock until its TCP connection drops (one stuck inside a send is still cut off after the lease).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from typing import Any

import psycopg

from pgcelery import dsn

log = logging.getLogger(__name__)

#: Seconds before the server probes (and then drops) a beat's silent TCP connection, so a beat
#: whose host vanished releases the lock even where the lease cannot be enforced.
_SERVER_KEEPALIVE = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10}
#: The first server version with ``idle_session_timeout``.
_IDLE_SESSION_TIMEOUT_SINCE = 140000
#: Whether this session holds the leader lock, as pg_locks shows a bigint advisory key.
_HOLDS_LOCK = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid()"
    " AND locktype = 'advisory' AND granted AND objsubid = 1"
    " AND ((classid::bigint << 32) | objid::bigint) = %(key)s)"
)


class LeadershipLost(Exception):
    """The session about to send no longer holds the leader lock."""


def leader_lock_key(schema: str = "public") -> int:
    """The 64-bit advisory lock key beat processes of one pgcelery schema compete for."""
    # The text is the scheduler's original module path. It is hashed, not imported: changing it
    # would let beat processes of two releases both lead during a rolling deploy.
    digest = hashlib.blake2b(f"pgcelery.beat:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class LeaderSession:
    """One beat process's database session, and whether it is the leader's."""

    def __init__(self, database_url: str, schema: str, lease: float) -> None:
        self._url = database_url
        self._key = leader_lock_key(schema)
        self._lease_ms = max(1, round(lease * 1000))
        #: The longest a leader may stay silent: well inside the lease, so only a stall ends it.
        self.heartbeat = lease / 3
        self._db: psycopg.Connection[Any] | None = None
        self._leading = False

    @property
    def key(self) -> int:
        return self._key

    @property
    def leading(self) -> bool:
        return self._leading and self._db is not None and not self._db.closed

    @property
    def broken(self) -> bool:
        """Whether the session was lost (rather than closed by us)."""
        return self._db is not None and (self._db.broken or self._db.closed)

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The session; a new one when there is none, and a new session never leads."""
        db = self._db
        if db is None or db.closed:
            self._leading = False
            db = self._db = psycopg.connect(
                dsn.libpq_url(self._url),
                autocommit=True,
                application_name=f"pgcelery-beat:{socket.gethostname()}:{os.getpid()}",
            )
            for name, seconds in _SERVER_KEEPALIVE.items():
                db.execute(f"SET {name} = {int(seconds)}")
        return db

    def try_lead(self) -> bool:
        """Take the leader lock if it is free, arming the lease in the same statement."""
        db = self.connection
        enforced = db.info.server_version >= _IDLE_SESSION_TIMEOUT_SINCE
        idle = "AND set_config('idle_session_timeout', %(ms)s, false) IS NOT NULL"
        # One statement, so there is no moment at which this session holds the lock without the
        # lease: a session-level advisory lock outlives the statement, the timeouts apply at once.
        row = db.execute(
            "SELECT CASE WHEN pg_try_advisory_lock(%(key)s) THEN"
            " set_config('idle_in_transaction_session_timeout', %(ms)s, false) IS NOT NULL"
            f" {idle if enforced else ''} ELSE false END",
            {"key": self._key, "ms": str(self._lease_ms)},
        ).fetchone()
        self._leading = bool(row and row[0])
        if self._leading and not enforced:
            log.warning(
                "pgcelery.beat.lease_not_enforced",
                extra={"server_version": db.info.server_version, "needs": "PostgreSQL 14"},
            )
        return self._leading

    def fence(self) -> None:
        """Raise :class:`LeadershipLost` unless this session holds the lock right now.

        Called inside the transaction that sends a run: the session lock cannot be lost while
        the session lives, and a session that dies before its commit commits nothing.
        """
        db = self._db
        if self.leading and db is not None:
            row = db.execute(_HOLDS_LOCK, {"key": self._key}).fetchone()
            if row and row[0]:
                return
        self._leading = False
        raise LeadershipLost("this beat's session does not hold the leader lock")

    def close(self) -> bool:
        """End the session, which releases the lock at once; True if it was the leader's.

        "Was" as this process believed: a session the server has already ended counts too.
        """
        was_leading = self._leading
        self._leading = False
        if self._db is not None:
            self._db.close()
            self._db = None
        return was_leading
