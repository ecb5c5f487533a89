"""pgcelery's kombu transport: a PostgreSQL queue that loses nothing and wakes in milliseconds.

It serves the ``sqla+postgresql+psycopg://`` URL in place of kombu's stock SQLAlchemy transport
(``create_app`` installs it; see :func:`install`) on the tables the migrations create:

* claim up to the prefetch window in one ``UPDATE … FOR UPDATE SKIP LOCKED`` statement, highest
  ``priority`` (0-9, 9 most urgent) first, then oldest;
* every claim carries a lease (``visible_at``) and a per-delivery ``lease_token``; a thread renews
  the leases of everything the worker holds unacked, and a message whose worker died becomes
  claimable again when its lease runs out;
* acks delete the row, fenced by the token, so a worker that lost its lease cannot ack or renew a
  message that was handed to someone else;
* an insert trigger NOTIFYs; workers LISTEN (or poll, for PgBouncer transaction pooling).
"""

from __future__ import annotations

import logging
import threading
from queue import Empty
from time import monotonic
from typing import Any

import psycopg
import psycopg.errors
from kombu.transport import virtual

from pgcelery import dsn
from pgcelery.broker import listener
from pgcelery.broker.caller_transaction import enqueue_using
from pgcelery.broker.channel import Channel
from pgcelery.exceptions import SchemaChangedWhileRunning, SchemaError
from pgcelery.schema.check import check_schema
from pgcelery.schema.names import MESSAGE_CHANNEL

__all__ = ["Channel", "Transport", "enqueue_using", "install"]

log = logging.getLogger(__name__)

#: Broker URLs this process has connected to with the schema at head.
_RAN_ON: set[str] = set()


class Transport(virtual.Transport):
    """kombu transport for ``sqla+postgresql+psycopg://`` URLs, backed by pgcelery's tables."""

    Channel = Channel
    can_parse_url = True
    default_port = 0
    # Not "sql": Celery switches events off for that driver type (celery/events/dispatcher.py).
    driver_type = "postgresql"
    driver_name = "pgcelery"
    polling_interval = 1.0
    implements = virtual.Transport.implements.extend(
        asynchronous=False,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )
    connection_errors = (
        *virtual.Transport.connection_errors,
        psycopg.OperationalError,
        psycopg.InterfaceError,
        # A table or column gone from under a running process (a downgrade, a restore): retried
        # like an outage, see establish_connection.
        psycopg.errors.UndefinedTable,
        psycopg.errors.UndefinedColumn,
        SchemaChangedWhileRunning,
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._wake = threading.Event()
        self._next_claim_poll = 0.0
        #: When a rate-limited message may start (monotonic), if a claim said so.
        self._claim_due: float | None = None
        #: Whether channels claim messages in this round of drain_events.
        self.claiming = True
        self._listening = False
        #: Ids of the queues this connection consumes from the message table.
        self._watched: set[int] = set()
        options = client.transport_options
        self._listen = bool(options.get("listen", True))

    def driver_version(self) -> str:
        return str(psycopg.__version__)

    def establish_connection(self) -> Any:
        # Connect now, so an unreachable database is a connection error that Celery retries,
        # not a failure at the first publish or claim. A database that is not at head stops a
        # process that never ran on it (SchemaError is not a connection error: fail fast, with
        # the command to run); a process that was already running keeps retrying instead,
        # so a worker survives a schema change and resumes once migrated.
        url = self.client.hostname
        try:
            check_schema(url, self.client.transport_options.get("schema", "public"))
        except SchemaError as exc:
            if url in _RAN_ON:
                raise SchemaChangedWhileRunning(str(exc)) from None
            raise
        _RAN_ON.add(url)
        channel = self.create_channel(self)
        channel._conn()
        self._avail_channels.append(channel)
        return self

    def _ensure_listening(self) -> None:
        if self._listening or not self._listen:
            return
        # Broadcasts wake a connection through its channels' own subscriptions
        # (pgcelery.broker.broadcast), only for the exchanges they read.
        listener.subscribe(dsn.libpq_url(self.client.hostname), MESSAGE_CHANNEL, self._on_message)
        self._listening = True

    def close_connection(self, connection: Any) -> None:
        if self._listening:
            # The process-wide listener outlives this connection: stop calling into it (the
            # last subscriber of a database to leave closes its LISTEN connection).
            listener.unsubscribe(
                dsn.libpq_url(self.client.hostname), MESSAGE_CHANNEL, self._on_message
            )
            self._listening = False
        super().close_connection(connection)

    def _watch(self, queue_id: int) -> None:
        self._watched.add(queue_id)

    def _on_message(self, payload: str | None) -> None:
        # The payload is the queue id: a process consuming other queues (an event receiver,
        # a worker of another queue) is not woken by every task published elsewhere.
        if payload is None or not payload.isdigit() or int(payload) in self._watched:
            self._wake.set()

    def _catch_up_broadcasts(self, head: int) -> None:
        """Deliver the broadcasts up to ``head`` that this connection's channels have not read
        yet (the worker's remote control channel), before the messages claimed with it."""
        for channel in list(self.channels):
            channel.broadcast.catch_up(head)

    def _claim_within(self, seconds: float) -> None:
        """Claim again in ``seconds`` at the latest (a rate-limited message may start then)."""
        due = monotonic() + max(seconds, 0.0)
        self._claim_due = due if self._claim_due is None else min(self._claim_due, due)
        self._next_claim_poll = min(self._next_claim_poll, due)

    def _poll_wait(self) -> float:
        """Seconds to wait for a NOTIFY before looking again: the polling interval, or less
        when a channel reads the broadcast log on a timer (an event receiver) or a claim is
        due sooner (a rate limit's next start)."""
        intervals = [c.broadcast.poll_interval() for c in list(self.channels)]
        found = [float(i) for i in intervals if i is not None]
        if self._claim_due is not None:
            found.append(max(self._claim_due - monotonic(), 0.0))
        return min([float(self.polling_interval), *found])

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        end = None if timeout is None else monotonic() + timeout
        first = True
        while True:
            woken = self._wake.is_set()
            if woken:
                self._wake.clear()  # a wake-up after this point is seen by the next round
            # Claim in each call's first round (capacity may have come back), after a wake-up,
            # and every polling interval; not on the shorter timer of an event receiver's log
            # reads, or a worker whose gossip polls would claim ten times a second when idle.
            now = monotonic()
            self.claiming = first or woken or now >= self._next_claim_poll
            first = False
            if self.claiming:
                self._next_claim_poll = now + self.polling_interval * 0.99
                self._claim_due = None  # this round's claim says again when, if it must
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            wait = self._poll_wait()
            if end is not None:
                remaining = end - monotonic()
                if remaining <= 0:
                    raise TimeoutError()
                wait = min(wait, remaining)
            self._wake.wait(wait)


def install() -> None:
    """Serve ``sqla+…`` URLs with this transport, process-wide (idempotent).

    kombu picks the transport from the URL prefix, which wins over ``Connection(transport=…)``
    and ``broker_transport``, so the alias itself is repointed. A plain kombu ``Connection`` to
    a ``sqla+postgresql+psycopg://`` URL uses this transport once this has run.
    """
    import kombu.transport as kombu_transport

    path = f"{__name__}:Transport"
    if kombu_transport.TRANSPORT_ALIASES.get("sqla") != path:
        kombu_transport.TRANSPORT_ALIASES["sqla"] = path
        kombu_transport.TRANSPORT_ALIASES["sqlalchemy"] = path
        kombu_transport._transport_cache.pop("sqla", None)
        kombu_transport._transport_cache.pop("sqlalchemy", None)
