"""Fanout across processes and machines: a broadcast log every bound consumer reads.

A message published to a fanout exchange (Celery's remote control, ``celery.pidbox``), or to a
topic exchange an ephemeral queue elsewhere is bound to (worker events, ``celeryev``), becomes
one row of ``pgcelery_broadcast``. Each consuming channel reads the log from its own position
(the last id it read), woken by NOTIFY, and hands each row to every one of its queues whose
binding matches: exactly once per binding. Ids become visible in id order (an advisory lock
taken by the table's statement trigger, see revision 0004), so a reader never skips a row.

Retention is bounded by age and by row count, pruned by publishers every ``prune_every``
publications and by the workers' pruner (:mod:`pgcelery.scheduling.pruning`): a consumer that
falls further behind than that loses the oldest broadcasts (as a Redis pub/sub subscriber
would) and logs ``pgcelery.broadcast.gap``.

Reply queues (``*.reply.celery.pidbox``) are not broadcast: they are direct, so the worker
routes a reply through :mod:`pgcelery.broker.bindings` into the ordinary message table.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Protocol

import psycopg
from kombu.transport.virtual.exchange import DirectExchange, FanoutExchange, TopicExchange
from kombu.utils.json import dumps, loads

from pgcelery.broker import listener
from pgcelery.broker.bindings import BindingRegistry, Execute
from pgcelery.schema.names import BROADCAST_CHANNEL, Names

log = logging.getLogger(__name__)

READ_BATCH = 200
_PUBLISHED = itertools.count(1)
#: (pid, conninfo, queue) → last id read: a consumer that reconnects resumes where it stopped.
_POSITIONS: dict[tuple[int, str, str], int] = {}
_POSITIONS_LOCK = threading.Lock()


@dataclass
class _Binding:
    exchange: str
    routing_key: str
    pattern: str | None


@dataclass
class _LogQueue:
    """A queue this channel consumes from the broadcast log, and its bindings."""

    name: str
    bindings: list[_Binding] = field(default_factory=list)
    #: Read on a timer, not woken by NOTIFY: an event receiver's queue (topic bindings only).
    polled: bool = False


class BroadcastChannel(Protocol):
    """What the broadcast side needs of the transport's channel (:mod:`pgcelery.broker.channel`).

    Spelled out here so the channel depends on this module and not the other way round.
    """

    names: Names
    binding_ttl: float
    listen: bool
    polling_interval: float
    events_poll_interval: float
    broadcast_max_rows: int
    broadcast_max_age: float
    broadcast_prune_every: int
    broadcast: ChannelBroadcast
    connection: Any
    state: Any
    _conninfo: str
    _queue_ids: dict[str, int]

    def _execute(
        self, query: str, params: tuple[Any, ...] = (), role: str = "publish"
    ) -> psycopg.Cursor[Any]: ...

    def typeof(self, exchange: str) -> Any: ...

    def local_queues(self, exchange: str, routing_key: str) -> list[str]: ...

    def _lookup(self, exchange: str, routing_key: str) -> Any: ...

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None: ...


class ChannelBroadcast:
    """A channel's side of the broadcast log and of the shared bindings."""

    def __init__(self, channel: BroadcastChannel) -> None:
        self._channel = channel
        self.registry = BindingRegistry(channel.names, channel.binding_ttl)
        self._ephemeral: set[str] = set()
        self._queues: dict[str, _LogQueue] = {}
        #: The shared bindings this channel registered, (exchange, queue, routing key).
        self._registered: dict[tuple[str, str, str], None] = {}
        self._position = 0
        self._dirty = threading.Event()
        self._last_read = 0.0
        self._last_refresh = 0.0
        self._subscribed = False

    # -- declaring and consuming -------------------------------------------------------------

    def declared(self, queue: str, auto_delete: bool = False, exclusive: bool = False) -> None:
        if auto_delete or exclusive:
            self._ephemeral.add(queue)

    def is_ephemeral(self, queue: str) -> bool:
        return queue in self._ephemeral

    def bound(self, exchange: str, routing_key: str, queue: str) -> None:
        """Share the binding of an ephemeral queue at once: the reply queue of a remote control
        request is bound just before the request is published, and consumed only after."""
        if queue in self._ephemeral:
            row = (exchange, queue, routing_key or "")
            self.registry.register(self._channel._execute, [row])
            self._registered[row] = None
            # Look the id up again now that the binding is committed: the cached one may be of
            # a row pruned while this queue had no binding (pgcelery.broker.queue_rows).
            self._channel._queue_ids.pop(queue, None)

    def consume(self, queue: str) -> bool:
        """Start reading ``queue``'s bindings from the log; False if it is an ordinary queue."""
        channel = self._channel
        bindings: list[_Binding] = []
        fanout = topic = False
        for exchange, routing_key, arguments in channel.state.queue_bindings(queue):
            kind = channel.typeof(exchange)
            routing_key, pattern, _ = kind.prepare_bind(queue, exchange, routing_key, arguments)
            bindings.append(_Binding(exchange, routing_key or "", pattern))
            fanout = fanout or kind.type == "fanout"
            topic = topic or (kind.type == "topic" and queue in self._ephemeral)
        if not (fanout or topic):
            return False
        head = self._resume_position(queue)
        if not self._queues:
            self._position = head
        self._position = min(self._position, head)
        # Remote control (fanout) must answer within milliseconds: LISTEN. An event receiver
        # (topic only) polls instead: PostgreSQL wakes every listening connection of the
        # database for every NOTIFY, so one more listener taxes each task published (measured:
        # about 6% of throughput), while events reach a monitor soon enough on a timer. In a
        # process that listens anyway (a worker's gossip), NOTIFY costs nothing more.
        self._queues[queue] = _LogQueue(queue, bindings, polled=not fanout)
        if fanout or listener.listening(channel._conninfo):
            self._subscribe()
        self._dirty.set()
        return True

    def poll_interval(self) -> float | None:
        """How long this channel may wait before it reads the log again (None: not reading)."""
        if not self._queues:
            return None
        channel = self._channel
        if not self._subscribed and any(q.polled for q in self._queues.values()):
            return min(channel.polling_interval, channel.events_poll_interval)
        return float(channel.polling_interval)

    def remote_direct(self, exchange: str, routing_key: str) -> list[str]:
        """Queues in other processes bound to the direct ``exchange`` (reply queues)."""
        queues = self.registry.direct_queues(self._channel._execute, exchange, routing_key)
        for queue in queues:
            # The consumer owns the queue row; look its id up again rather than trust a cache.
            self._channel._queue_ids.pop(queue, None)
        return queues

    def fed_by_log(self, queue: str) -> bool:
        return queue in self._queues

    def cancel(self, queue: str) -> None:
        self._queues.pop(queue, None)

    def forget(self, queue: str) -> None:
        """``queue`` was deleted: nobody may route to it any more."""
        self._queues.pop(queue, None)
        rows = [row for row in self._registered if row[1] == queue]
        if rows:
            for row in rows:
                del self._registered[row]
            self.registry.remove(self._channel._execute, [queue])

    def _key(self, queue: str) -> tuple[int, str, str]:
        return (os.getpid(), self._channel._conninfo, queue)

    def _resume_position(self, queue: str) -> int:
        table = self._channel.names.broadcast
        row = self._channel._execute(
            f"SELECT coalesce(max(id), 0), coalesce(min(id), 0) FROM {table}"
        ).fetchone()
        head, oldest = (int(row[0]), int(row[1])) if row else (0, 0)
        with _POSITIONS_LOCK:
            remembered = _POSITIONS.get(self._key(queue))
        if remembered is None:
            return head
        if oldest > remembered + 1:
            log.warning(
                "pgcelery.broadcast.gap",
                extra={"queue": queue, "position": remembered, "oldest": oldest},
            )
        return min(remembered, head)

    def _subscribe(self) -> None:
        if self._subscribed or not self._channel.listen:
            return
        listener.subscribe(self._channel._conninfo, BROADCAST_CHANNEL, self._on_notify)
        self._subscribed = True

    def _on_notify(self, exchange: str | None) -> None:
        if exchange is None or any(
            b.exchange == exchange for q in list(self._queues.values()) for b in q.bindings
        ):
            self._dirty.set()
            self._channel.connection._wake.set()

    # -- reading -----------------------------------------------------------------------------

    def catch_up(self, head: int) -> None:
        """Deliver at once what the log holds up to ``head`` for this channel's queues."""
        while self._queues and self._position < head:
            before = self._position
            self.drain(force=True)
            if self._position == before:  # the rows were pruned meanwhile
                return

    def drain(self, force: bool = False) -> bool:
        """Deliver what the log holds for this channel's queues; True if anything was.

        Without ``force`` the log is read only when a NOTIFY marked it dirty or the polling
        interval has passed.
        """
        if self._registered and monotonic() - self._last_refresh > self.registry.ttl / 3:
            self._last_refresh = monotonic()
            self.registry.refresh(self._channel._execute, list(self._registered))
        if not self._queues:
            return False
        if not self._subscribed and listener.listening(self._channel._conninfo):
            self._subscribe()  # the process started listening since (the worker's task queues)
        due = monotonic() - self._last_read >= (self.poll_interval() or 0.0)
        if not (force or self._dirty.is_set() or due):
            return False
        self._dirty.clear()
        self._last_read = monotonic()
        exchanges = sorted({b.exchange for q in self._queues.values() for b in q.bindings})
        # One statement, one snapshot: the head and the rows up to it. Rows committed later
        # have larger ids (see the module docstring), so moving to the head skips nothing.
        rows = self._channel._execute(
            f"SELECT t.head, r.id, r.exchange, r.routing_key, r.payload"
            f" FROM (SELECT max(id) AS head FROM {self._channel.names.broadcast}) t"
            " LEFT JOIN LATERAL (SELECT id, exchange, routing_key, payload"
            f"  FROM {self._channel.names.broadcast}"
            "  WHERE id > %s AND id <= t.head AND exchange = ANY(%s) ORDER BY id LIMIT %s) r"
            " ON true",
            (self._position, exchanges, READ_BATCH),
        ).fetchall()
        found = [row for row in rows if row[1] is not None]
        head = rows[0][0] if rows else None
        if len(found) >= READ_BATCH:
            self._position = int(found[-1][1])
            self._dirty.set()  # more to read
        elif head is not None:
            self._position = max(self._position, int(head))
        self._remember()
        delivered = False
        for _, row_id, exchange, routing_key, raw in found:
            for queue in self._matching(exchange, routing_key):
                payload = loads(raw)
                payload.setdefault("properties", {})["delivery_tag"] = (
                    f"pgcelery-broadcast:{row_id}:{queue.name}"
                )
                self._channel.connection._deliver(payload, queue.name)
                delivered = True
        return delivered

    def _remember(self) -> None:
        with _POSITIONS_LOCK:
            for name in self._queues:
                _POSITIONS[self._key(name)] = self._position

    def _matching(self, exchange: str, routing_key: str) -> list[_LogQueue]:
        matched = []
        for queue in list(self._queues.values()):
            for binding in queue.bindings:
                if binding.exchange != exchange:
                    continue
                kind = self._channel.typeof(exchange)
                if kind.type == "fanout" or (
                    isinstance(kind, TopicExchange)
                    and binding.pattern is not None
                    and kind._match(binding.pattern, routing_key)
                ):
                    matched.append(queue)
                    break
        return matched

    # -- publishing --------------------------------------------------------------------------

    def publish(self, exchange: str, routing_key: str, message: dict[str, Any]) -> None:
        channel = self._channel
        channel._execute(
            f"INSERT INTO {channel.names.broadcast} (exchange, routing_key, payload)"
            " VALUES (%s, %s, %s)",
            (exchange, routing_key or "", dumps(message)),
        )
        if next(_PUBLISHED) % channel.broadcast_prune_every == 0:
            self.prune()

    def prune(self) -> int:
        """Drop broadcasts beyond the row limit or older than the age limit; returns the count."""
        channel = self._channel
        return prune_broadcasts(
            channel._execute, channel.names, channel.broadcast_max_rows, channel.broadcast_max_age
        )

    def close(self) -> None:
        if self._subscribed:
            listener.unsubscribe(self._channel._conninfo, BROADCAST_CHANNEL, self._on_notify)
            self._subscribed = False
        if self._registered:
            try:
                self.registry.remove(self._channel._execute, {row[1] for row in self._registered})
            except Exception as exc:  # the bindings expire by themselves
                log.debug("pgcelery.broadcast.unbind_failed", extra={"error": type(exc).__name__})
            self._registered.clear()
        self._queues.clear()


def prune_broadcasts(execute: Execute, names: Names, max_rows: int, max_age: float) -> int:
    """Delete the broadcasts beyond the newest ``max_rows`` or older than ``max_age`` seconds.

    Publishers run this every ``prune_every`` publications; the workers' pruner
    (:mod:`pgcelery.scheduling.pruning`) too, for a log that nobody publishes to any more.
    """
    table = names.broadcast
    cur = execute(
        f"DELETE FROM {table} WHERE id <= greatest("
        f" (SELECT max(id) FROM {table}) - %s,"
        f" (SELECT max(id) FROM {table} WHERE created_at < now() - make_interval(secs => %s)))",
        (max_rows, max_age),
    )
    return cur.rowcount


# -- exchange types -------------------------------------------------------------------------


class PgDirectExchange(DirectExchange):
    """Direct routing that also reaches ephemeral queues bound in other processes (replies)."""

    def deliver(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> None:
        channel: BroadcastChannel = self.channel
        queues = channel._lookup(exchange, routing_key)
        if not queues and exchange:
            queues = channel.broadcast.remote_direct(exchange, routing_key)
        for queue in queues:
            try:
                channel._put(queue, message, **kwargs)
            except psycopg.errors.ForeignKeyViolation:
                # The queue's consumer left and its row was pruned between our lookup and this
                # insert: a message to a deleted queue is dropped, as on any broker.
                log.info("pgcelery.broadcast.queue_gone", extra={"queue": queue})


class PgTopicExchange(TopicExchange):
    """Topic routing: ordinary queues get a copy each; ephemeral queues anywhere (event
    receivers) share one broadcast row."""

    def deliver(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> None:
        channel: BroadcastChannel = self.channel
        hub = channel.broadcast
        for queue in channel.local_queues(exchange, routing_key):
            channel._put(queue, message, **kwargs)
        if hub.registry.topic_listened(channel._execute, exchange, routing_key):
            hub.publish(exchange, routing_key, message)


EXCHANGE_TYPES: dict[str, type[Any]] = {
    "direct": PgDirectExchange,
    "topic": PgTopicExchange,
    "fanout": FanoutExchange,
}
