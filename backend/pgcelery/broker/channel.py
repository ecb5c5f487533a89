"""The transport's channel: claims, leases, acks and publishing on ``kombu_message``.

See :mod:`pgcelery.broker.transport` for the design; :mod:`pgcelery.broker.message_sql` holds
the SQL.
"""

from __future__ import annotations

import logging
import threading
from queue import Empty
from typing import Any

import psycopg
from kombu.utils.json import dumps

from pgcelery import connections, dsn
from pgcelery.broker import bulk, limits
from pgcelery.broker.acks import PendingAcks
from pgcelery.broker.broadcast import EXCHANGE_TYPES, ChannelBroadcast
from pgcelery.broker.caller_transaction import (
    Identity,
    caller_connection,
    check_same_database,
    identity_of,
)
from pgcelery.broker.channel_options import ChannelOptions
from pgcelery.broker.claim_sql import GROUP, WAIT, ClaimSql, FairCursors
from pgcelery.broker.dead_letters import bury, claimant
from pgcelery.broker.delivery import QoS, due_at, parse_tag, sort_claimed
from pgcelery.broker.leases import LeaseRenewer
from pgcelery.broker.message_sql import MessageSql
from pgcelery.broker.pauses import PauseCache
from pgcelery.broker.queue_rows import resolve_fenced
from pgcelery.broker.recording import Insert, record
from pgcelery.broker.settling import Settling
from pgcelery.broker.unique import publish_unique
from pgcelery.broker.unique import take as take_unique
from pgcelery.schema.names import Names

log = logging.getLogger(__name__)

MAX_BATCH = 100


class Channel(ChannelOptions):
    QoS = QoS
    # Broadcast (pgcelery.broker.broadcast): fanout across processes, for remote control and events.
    supports_fanout = True
    exchange_types = dict(EXCHANGE_TYPES)

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
        self._identity: Identity | None = None
        self._acks = PendingAcks(self._delete_acked)
        self.broadcast = ChannelBroadcast(self)
        self.settling = Settling(self)
        self.sql = MessageSql(self.names)
        self.claim_sql = ClaimSql(self.names)
        self._fair = FairCursors()
        self.pauses = PauseCache(self.names)

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
        server = dict(connections.INDEX_PLANS)
        if self.statement_timeout > 0:
            # A broker statement takes milliseconds; one stuck this long is a broken session.
            server["statement_timeout"] = str(round(self.statement_timeout * 1000))
        if role == "consume" and self.async_commit:
            server["synchronous_commit"] = "off"
        # Poll-only mode is the PgBouncer mode (see connections.connect_kwargs).
        kwargs = connections.connect_kwargs(not self.listen, **server)
        return psycopg.connect(self._conninfo, **kwargs)

    def _execute(
        self, query: str, params: tuple[Any, ...] | dict[str, Any] = (), role: str = "publish"
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

    def _database(self) -> Identity:
        if self._identity is None:
            self._identity = identity_of(self._conn())
        return self._identity

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
            queues = self.pauses.filter(self._execute, queues) if queues else queues
            if queues:
                return self._get_many(queues, timeout=timeout)
        raise Empty()

    # -- publish -----------------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        priority = self._get_message_priority(message, reverse=False)
        unique = take_unique()
        if unique is not None:
            return publish_unique(self, unique, queue, message, priority)
        body = limits.checked(dumps(message), self.max_message_bytes)
        values = (
            body,
            self._queue_id(queue),
            priority,
            due_at(message),
            limits.tenant_of(message),
            *limits.limit_columns(message),
        )
        recorded = record()
        if recorded is not None:  # an async publish (pgcelery.broker.async_publish) runs it
            recorded.append(Insert(self._conninfo, self.sql.put, values, self.statement_timeout))
            return
        batch = bulk.collecting()
        if batch is not None:  # a group's member: sent with the others (pgcelery.broker.bulk)
            batch.add(self, values)
            return
        self._put_rows([values])

    def _put_rows(self, rows: list[bulk.Row]) -> None:
        query, params = (
            (self.sql.put, rows[0]) if len(rows) == 1 else (self.sql.put_many, bulk.as_json(rows))
        )
        outer = caller_connection()
        if outer is not None:
            check_same_database(outer, self._database())
            outer.execute(query, params)
            return
        self._execute(query, params)

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
        params: dict[str, Any] = {
            "acked_ids": acked_ids,
            "acked_tokens": acked_tokens,
            "queues": ids,
            "limit": limit,
            "lease": self.visibility_timeout,
            "claimant": claimant(),
            "max_bytes": self.max_message_bytes,
        }
        params.update(self._fair.params(ids))
        try:
            rows = self._execute(
                self.claim_sql.fair if self.fair_tenants else self.claim_sql.in_order,
                params,
                role="consume",
            ).fetchall()
        except Exception:
            self._acks.put_back(acked_ids, acked_tokens)
            raise
        for message_id in acked_ids:
            self._forget(message_id)
        waits = [row[WAIT] for row in rows if row[0] is None and row[WAIT] is not None]
        for row in rows:
            if row[0] is None and row[GROUP] is not None:
                self._fair.stopped(row[1], row[GROUP])
        rows = [row for row in rows if row[0] is not None]
        if waits:  # a rate limit lets a message start then: claim again at that moment
            self.connection._claim_within(min(waits))
        if self.fair_tenants:
            self._fair.advance(rows)
        head = int(rows[0][5]) if rows else 0
        claimed, refused = sort_claimed(rows, self._queue_names, self.max_deliveries)
        for message_id, token, _, _ in claimed:
            self._lease_renewer().hold(message_id, token)
        if refused:
            bury(self._conn("consume"), self.names, self._conninfo, refused)
        return [(queue, payload) for _, _, queue, payload in claimed], head

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
            self._renewer = LeaseRenewer(
                lambda: self._connect("consume"), self.names, self.visibility_timeout
            )
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

    def _release(self, tags: list[str], started: bool = True) -> None:
        """Make the messages behind ``tags`` claimable again at once (lease given back); a
        delivery whose task never ``started`` does not count towards the delivery limit."""
        pairs = [p for p in map(parse_tag, tags) if p is not None]
        if not pairs:
            return
        try:
            self._execute(
                self.sql.release if started else self.sql.hand_back,
                ([p[0] for p in pairs], [p[1] for p in pairs]),
                role="consume",
            )
        finally:
            # Given back or not (the database may be down: that is often why the channel
            # closes), they are no longer ours to renew: at worst their leases run out.
            for message_id, _ in pairs:
                self._forget(message_id)

    def _forget(self, message_id: int) -> None:
        if self._renewer is not None:
            self._renewer.release(message_id)
            if self.closed:
                self.settling.forgotten()

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # hands back what never started (QoS.restore_unacked)
        finally:
            self.broadcast.close()
            self.settling.after_close()
