"""Lease renewal: keep every message a worker holds unacked invisible to other workers.

Each consuming channel has one renewer: a daemon thread with its own connection that, every
third of the visibility timeout, pushes ``visible_at`` forward for all held ``(id, token)``
pairs in one statement. A pair that no longer matches has lost its lease (the worker was cut
off for longer than the timeout and the message went to someone else): it is dropped, and the
channel's later ack or renewal of it matches nothing.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from pgcelery.schema.names import Names

log = logging.getLogger(__name__)


class LeaseRenewer:
    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        names: Names,
        visibility_timeout: float,
    ) -> None:
        self._connect = connect
        self._names = names
        self._timeout = visibility_timeout
        self._held: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._db: psycopg.Connection[Any] | None = None

    def hold(self, message_id: int, token: uuid.UUID | str) -> None:
        with self._lock:
            self._held[message_id] = str(token)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pgcelery-leases", daemon=True
                )
                self._thread.start()

    def release(self, message_id: int) -> None:
        with self._lock:
            self._held.pop(message_id, None)

    def held(self) -> dict[int, str]:
        with self._lock:
            return dict(self._held)

    def stop(self) -> None:
        self._stopped.set()

    def renew(self) -> None:
        """Extend every held lease now; drop the ones that were lost."""
        held = self.held()
        if not held:
            return
        if self._db is None or self._db.closed:
            self._db = self._connect()
        rows = self._db.execute(
            f"UPDATE {self._names.message} m"
            " SET visible_at = now() + make_interval(secs => %s)"
            " FROM unnest(%s::bigint[], %s::uuid[]) AS r(id, token)"
            " WHERE m.id = r.id AND m.lease_token = r.token RETURNING m.id",
            (self._timeout, list(held), list(held.values())),
        ).fetchall()
        kept = {row[0] for row in rows}
        lost = [message_id for message_id in held if message_id not in kept]
        if lost:
            with self._lock:
                for message_id in lost:
                    # Only drop it if it was not acked (and released) in the meantime.
                    if self._held.get(message_id) == held[message_id]:
                        del self._held[message_id]
            log.debug("pgcelery.broker.leases_lost", extra={"count": len(lost)})

    def _run(self) -> None:
        interval = max(self._timeout / 3.0, 0.05)
        while not self._stopped.wait(interval):
            try:
                self.renew()
            except psycopg.Error as exc:
                log.warning("pgcelery.broker.renew_failed", extra={"error": type(exc).__name__})
                if self._db is not None:
                    self._db.close()
                self._db = None
        if self._db is not None:
            self._db.close()
