"""The transport's channel: claims, leases, acks and publishing on ``kombu_message``.

See :mod:`pgcelery.broker.transport` for the design; :mod:`pgcelery.broker.message_sql` holds
the SQL.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

import psycopg
from kombu.transport import virtual
from kombu.utils.json import dumps, loads

from pgcelery import dsn
from pgcelery.broker.acks import PendingAcks
from pgcelery.broker.broadcast import EXCHANGE_TYPES, ChannelBroadcast
from pgcelery.broker.delivery import QoS, parse_tag, tag
from pgcelery.broker.leases import LeaseRenewer
from pgcelery.broker.message_sql import MessageSql
from pgcelery.broker.queue_rows import resolve_fenced
from pgcelery.schema.tables import Names

log = logging.getLogger(__name__)

#: The caller's open database connection, while ``enqueue_using`` is active: messages published
#: on this thread are inserted in the caller's transaction instead of being committed at once.
_ENQUEUE_CONNECTION: contextvars.ContextVar[psycopg.Connection[Any] | None] = (
    contextvars.ContextVar("pgcelery_enqueue_connection", default=None)
)
MAX_BATCH = 100


@contextmanager
def enqueue_using(connection: psycopg.Connection[Any]) -> Iterator[None]:
    """Publish on ``connection`` (in its open transaction) for the duration of the block."""
    token = _ENQUEUE_CONNECTION.set(connection)
    try:
        yield
    finally:
        _ENQUEUE_CONNECTION.reset(token)


class Channel(virtual.Channel):
    QoS = QoS
    from_transport_options = (
        *virtual.Channel.from_transport_options,
        "visibility_timeout",
        "polling_interval",
        "listen",
        "schema",
        "async_commit",
        "binding_ttl",
        "broadcast_max_rows",
        "broadcast_max_age",
        "broadcast_prune_every",
        "events_poll_interval",
    )
    visibility_timeout: float = 30.0
    polling_interval: float = 1.0
    listen: bool = True
    schema: str = "public"
    #: Claims, acks, rejects and releases commit without waiting for the WAL flush.
    async_commit: bool = True
    # Broadcast (pgcelery.broker.broadcast): fanout across processes, for remote control and events.
    supports_fanout = True
    exchange_types = dict(EXCHANGE_TYPES)
    binding_ttl: float = 30.0
    broadcast_max_rows: int = 10_000
    broadcast_max_age: float = 600.0
    broadcast_prune_every: int = 100
    #: Seconds between an event receiver's reads of the broadcast log (pgcelery.broker.broadcast).
    events_poll_interval: float = 0.1

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.names = Names(self.schema)
        self._conninfo = dsn.libpq_url(connection.client.hostname)
        # Two connections, made on first use: "publish" commits durably (a producer told that
        # apply_async succeeded must never lose the message); "consume" may commit
        # asynchronously, because losing a claim, ack or release in a server crash only ever
        # makes a message run again, never disappear (see docs/explanation).
        self._dbs: dict[str, psycopg.Connection[Any]] = {}
        self._db_lock = threading.Lock()
        self._queue_ids: dict[str, int] = {}
        self._queue_names: dict[int, str] = {}
        self._renewer: LeaseRenewer | None = None
        self._acks = PendingAcks(self._delete_acked)
        self.broadcast = ChannelBroadcast(self)
        self.sql = MessageSql(self.names)

    # -- connection --------------------------------------------------------------------------

    def _conn(self, role: str = "publish") -> psycopg.Connection[Any]:
        db = self._dbs.get(role)
        if db is None or db.closed:
            with self._db_lock:
                db = self._dbs.get(role)
                if db is None or db.closed:
                    db = self._dbs[role] = self._connect(role)
        return db

    def _connect(self, role: str) -> psycopg.Connection[Any]:
        options = "-c synchronous_commit=off" if role == "consume" and self.async_commit else ""
        # Poll-only mode is the PgBouncer mode: no server-side prepared statements there.
        prepare = {} if self.listen else {"prepare_threshold": None}
        return psycopg.connect(self._conninfo, autocommit=True, options=options, **prepare)

    def _execute(
        self, query: str, params: tuple[Any, ...] = (), role: str = "publish"
    ) -> psycopg.Cursor[Any]:
        try:
            return self._conn(role).execute(query, params)
        except psycopg.OperationalError:
            self._drop_connection()
            raise

    def _drop_connection(self) -> None:
        with self._db_lock:
            dbs, self._dbs = list(self._dbs.values()), {}
        for db in dbs:
            db.close()

    # -- queues ------------------------------------------------------------------------------

    def _queue_id(self, queue: str) -> int:
        """The queue's id, creating its row on first use.

        Always on the channel's own autocommit connection, never in a caller's transaction
        (``enqueue_in``): a queue row created there would block every other producer of that
        queue, this process included, until the caller commits. Looked up under the fence the
        pruner respects (:mod:`pgcelery.broker.queue_rows`), so the id is never of a pruned row.
        """
        found = self._queue_ids.get(queue)
        if found is not None:
            return found
        try:
            queue_id = resolve_fenced(self._conn(), self.sql, queue)
        except psycopg.OperationalError:
            self._drop_connection()
            raise
        self._queue_ids[queue] = queue_id
        self._queue_names[queue_id] = queue
        return queue_id

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self.broadcast.declared(
            queue, kwargs.get("auto_delete", False), kwargs.get("exclusive", False)
        )
        self._queue_id(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        row = self._execute(self.sql.queue_id, (queue,))
        return row.fetchone() is not None

    def _size(self, queue: str) -> int:
        row = self._execute(self.sql.size, (self._queue_id(queue),)).fetchone()
        return int(row[0]) if row else 0

    def _purge(self, queue: str) -> int:
        cur = self._execute(self.sql.purge, (self._queue_id(queue),))
        return cur.rowcount

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self.broadcast.forget(queue)
        self._purge(queue)

    # -- broadcast hooks (pgcelery.broker.broadcast) -------------------------------------------

    def _queue_bind(self, exchange: str, routing_key: str, pattern: Any, queue: str) -> None:
        self.broadcast.bound(exchange, routing_key, queue)

    def _put_fanout(
        self, exchange: str, message: dict[str, Any], routing_key: str, **kw: Any
    ) -> None:
        self.broadcast.publish(exchange, routing_key, message)

    def local_queues(self, exchange: str, routing_key: str) -> list[str]:
        """Ordinary queues bound in this process that ``routing_key`` reaches; ephemeral ones
        (event receivers) are served from the broadcast log instead. Not ``_lookup``: a key
        nobody binds locally is normal for events, not undeliverable."""
        try:
            table = self.get_table(exchange)
            found = self.typeof(exchange).lookup(table, exchange, routing_key, None)
        except KeyError:
            return []
        return [q for q in found if q and not self.broadcast.is_ephemeral(q)]

    def routes(self, exchange: str, routing_key: str) -> bool:
        """Whether a message published to the topic ``exchange`` now would reach any queue, in
        this process or (through a live shared binding) in another one."""
        return bool(self.local_queues(exchange, routing_key)) or (
            self.broadcast.registry.topic_listened(self._execute, exchange, routing_key)
        )

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        if queue is not None:
            self.broadcast.cancel(queue)
        return super().basic_cancel(consumer_tag)

    def drain_events(self, timeout: float | None = None, callback: Any = None) -> Any:
        if self.broadcast.drain():
            return None
        if self._consumers and self.connection.claiming and self.qos.can_consume():
            queues = [q for q in self._active_queues if not self.broadcast.fed_by_log(q)]
            if queues:
                return self._get_many(queues, timeout=timeout)
        raise Empty()

    # -- publish -----------------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        priority = self._get_message_priority(message, reverse=False)
        payload = dumps(message)
        outer = _ENQUEUE_CONNECTION.get()
        if outer is not None:
            outer.execute(self.sql.put, (payload, self._queue_id(queue), priority))
            return
        self._execute(self.sql.put, (payload, self._queue_id(queue), priority))

    # -- consume -----------------------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        fed_by_log = self.broadcast.consume(queue)
        if not fed_by_log:
            # LISTEN before the first claim, so no wake-up can fall between the two. A process
            # that reads only the broadcast log (an event receiver) never listens here: every
            # task published would wake it for nothing.
            self.connection._ensure_listening()
            self.connection._watch(self._queue_id(queue))
        consumed = super().basic_consume(queue, no_ack, *args, **kwargs)
        if no_ack and not fed_by_log:
            self._delete_on_delivery(queue)
        return consumed

    def _delete_on_delivery(self, queue: str) -> None:
        """``no_ack``: nobody will ack (remote control replies), so the row goes as it is handed
        over; otherwise it would come back every visibility timeout, forever."""
        deliver = self.connection._callbacks[queue]

        def delete_then_deliver(raw: dict[str, Any]) -> Any:
            parsed = parse_tag(raw.get("properties", {}).get("delivery_tag", ""))
            if parsed is not None:
                self._execute(self.sql.delete_one, parsed)
                self._forget(parsed[0])
            return deliver(raw)

        self.connection._callbacks[queue] = delete_then_deliver

    def _claim(self, queues: list[str], limit: int) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        """Claim up to ``limit`` messages; also returns the broadcast head the claim saw."""
        ids = [self._queue_id(q) for q in queues]
        acked_ids, acked_tokens = self._acks.take()
        try:
            rows = self._execute(
                self.sql.claim,
                (acked_ids, acked_tokens, ids, limit, limit, self.visibility_timeout),
                role="consume",
            ).fetchall()
        except Exception:
            self._acks.put_back(acked_ids, acked_tokens)
            raise
        for message_id in acked_ids:
            self._forget(message_id)
        claimed = []
        head = int(rows[0][5]) if rows else 0
        for message_id, queue_id, token, deliveries, raw, _ in rows:
            payload = loads(raw)
            delivery_tag = tag(message_id, token)
            props = payload.setdefault("properties", {})
            props["delivery_tag"] = delivery_tag
            info = props.setdefault("delivery_info", {})
            info["redelivered"] = deliveries > 1
            claimed.append((self._queue_names.get(queue_id, ""), payload))
            self._lease_renewer().hold(message_id, token)
        return claimed, head

    def _get_many(self, queues: list[str], timeout: float | None = None) -> None:
        estimate = self.qos.can_consume_max_estimate()
        limit = MAX_BATCH if estimate is None else max(1, min(estimate, MAX_BATCH))
        claimed, head = self._claim(list(dict.fromkeys(queues)), limit)
        if not claimed:
            raise Empty()
        # A broadcast sent before these messages (``revoke`` then ``apply_async``) is handled
        # before them, as on a broker that delivers in order: the worker skips a revoked task
        # instead of running it because the revoke's wake-up came second.
        self.connection._catch_up_broadcasts(head)
        for queue, payload in claimed:
            self.connection._deliver(payload, queue)

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        claimed, _ = self._claim([queue], 1)
        if not claimed:
            raise Empty()
        return claimed[0][1]

    def _lease_renewer(self) -> LeaseRenewer:
        if self._renewer is None:
            self._renewer = LeaseRenewer(self._conninfo, self.names, self.visibility_timeout)
        return self._renewer

    # -- ack, reject, restore ----------------------------------------------------------------

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        parsed = parse_tag(delivery_tag)
        if parsed is not None:
            self._acks.add(*parsed)
        super().basic_ack(delivery_tag)
        self._wake_consumer()

    def _wake_consumer(self) -> None:
        # Capacity came back: claim again now. A closed channel (a task that finished after its
        # connection broke) has no connection to wake.
        if self.connection is not None:
            self.connection._wake.set()

    def _delete_acked(self, ids: list[int], tokens: list[str]) -> None:
        cur = self._execute(self.sql.delete_held, (ids, tokens), role="consume")
        for message_id in ids:
            self._forget(message_id)
        if cur.rowcount < len(ids):
            # Fenced: the lease ran out and the message went to another worker.
            log.warning("pgcelery.broker.ack_lost_lease", extra={"count": len(ids) - cur.rowcount})

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        parsed = parse_tag(delivery_tag)
        if parsed is not None:
            message_id, token = parsed
            if requeue:
                self._release([delivery_tag])
            else:
                self._execute(self.sql.delete_one, (message_id, token), role="consume")
                self._forget(message_id)
        self.qos.reject(delivery_tag, requeue=False)
        self._wake_consumer()

    def _restore(self, message: Any) -> None:
        self._release([message.delivery_tag])

    def _release(self, tags: list[str]) -> None:
        """Make the messages behind ``tags`` claimable again at once (lease given back)."""
        pairs = [p for p in map(parse_tag, tags) if p is not None]
        if not pairs:
            return
        self._execute(
            self.sql.release,
            ([p[0] for p in pairs], [p[1] for p in pairs]),
            role="consume",
        )
        for message_id, _ in pairs:
            self._forget(message_id)

    def _forget(self, message_id: int) -> None:
        if self._renewer is not None:
            self._renewer.release(message_id)
            if self.closed and not self._renewer.held():
                self._stop_settling()

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # hands back what never started (QoS.restore_unacked)
        finally:
            self.broadcast.close()
            self._settle_after_close()

    def _settle_after_close(self) -> None:
        """Stop at once, unless tasks still running hold messages of this channel.

        A channel closes when its connection breaks, while the worker's tasks run on. Their
        messages stay leased: the renewer goes on renewing them and the ack thread goes on
        retrying, each on a fresh connection, so a task that finishes after the reconnect is
        acked (fenced by its token) instead of running a second time when its lease runs out.
        The last ack or release stops both (``_forget``).
        """
        try:
            self._acks.flush_now()
        except psycopg.Error as exc:
            # Retried by the ack thread below; should the worker die first, the leases run out
            # and the messages run again: at least once, never lost.
            log.warning("pgcelery.broker.ack_flush_failed", extra={"error": type(exc).__name__})
        held = self._renewer.held() if self._renewer is not None else {}
        if held:
            log.info("pgcelery.broker.settling", extra={"count": len(held)})
            return
        self._stop_settling()

    def _stop_settling(self) -> None:
        self._acks.stop()
        if self._renewer is not None:
            self._renewer.stop()
        self._drop_connection()
