"""Shared bindings: which per-consumer queues exist, so publishers in other processes can route.

kombu's virtual transports keep exchange bindings in process memory. That is enough for task
queues (the producer declares and binds the queue it publishes to), but not for queues that
belong to one consumer process: the reply queue of ``celery inspect`` (a direct exchange the
worker publishes replies to) and an event receiver's queue (the ``celeryev`` topic exchange
workers publish events to). Consumers of such *ephemeral* queues (declared ``auto_delete`` or
``exclusive``) record their bindings here with an expiry they keep pushing forward while they
consume; a consumer that dies stops refreshing and its bindings expire. Expired bindings are
swept together with the messages still waiting in their queues (late replies), so a reply
queue nobody reads cannot keep rows in ``kombu_message``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from time import monotonic
from typing import Any

import psycopg
from kombu.transport.virtual.exchange import TopicExchange

from pgcelery.schema.names import Names

log = logging.getLogger(__name__)

Execute = Callable[[str, tuple[Any, ...]], "psycopg.Cursor[Any]"]

#: How long a publisher trusts what it read about an exchange's remote bindings. An event
#: receiver that starts sees events from its workers within about this long.
CACHE_SECONDS = 1.0


class BindingRegistry:
    """The ``pgcelery_binding`` table, seen from one channel."""

    def __init__(self, names: Names, ttl: float) -> None:
        self._names = names
        self.ttl = ttl
        self._topics: dict[str, tuple[float, list[str]]] = {}
        self._matcher = TopicExchange(None)

    def register(self, execute: Execute, rows: Iterable[tuple[str, str, str]]) -> None:
        """Record ``(exchange, queue, routing_key)`` bindings, live for ``ttl`` seconds."""
        found = list(rows)
        if not found:
            return
        execute(
            f"INSERT INTO {self._names.binding} AS b (exchange, queue, routing_key, expires_at)"
            " SELECT e, q, k, now() + make_interval(secs => %s)"
            " FROM unnest(%s::text[], %s::text[], %s::text[]) AS r(e, q, k)"
            " ON CONFLICT (exchange, queue, routing_key)"
            " DO UPDATE SET expires_at = excluded.expires_at",
            (self.ttl, [r[0] for r in found], [r[1] for r in found], [r[2] for r in found]),
        )

    def refresh(self, execute: Execute, rows: Iterable[tuple[str, str, str]]) -> None:
        """Keep these bindings alive, and sweep everyone's expired bindings.

        An upsert, not an update: a consumer that stalled for longer than ``ttl`` (or sat out
        a database outage) may have had its bindings swept by another process; it gets them
        back at its next refresh instead of silently receiving nothing from then on.
        """
        self.register(execute, rows)
        self.sweep(execute)

    def remove(self, execute: Execute, queues: Iterable[str]) -> None:
        names = list(queues)
        if names:
            execute(f"DELETE FROM {self._names.binding} WHERE queue = ANY(%s)", (names,))

    def sweep(self, execute: Execute) -> int:
        """Delete expired bindings and the messages left in their queues; returns the count."""
        cur = execute(
            f"WITH gone AS (DELETE FROM {self._names.binding} WHERE expires_at < now()"
            " RETURNING queue),"
            f" dropped AS (DELETE FROM {self._names.message} m USING {self._names.queue} q"
            " WHERE m.queue_id = q.id AND q.name IN (SELECT queue FROM gone)"
            f" AND NOT EXISTS (SELECT 1 FROM {self._names.binding} b"
            "  WHERE b.queue = q.name AND b.expires_at >= now())"
            " RETURNING 1)"
            " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM dropped)",
            (),
        )
        row = cur.fetchone()
        bindings, messages = (int(row[0]), int(row[1])) if row else (0, 0)
        if bindings:
            log.info(
                "pgcelery.broadcast.bindings_expired",
                extra={"bindings": bindings, "messages": messages},
            )
        return bindings

    def direct_queues(self, execute: Execute, exchange: str, routing_key: str) -> list[str]:
        """Live queues bound to the direct ``exchange`` with ``routing_key`` (never cached:
        a reply queue is bound just before the request that will be answered is sent)."""
        rows = execute(
            f"SELECT queue FROM {self._names.binding}"
            " WHERE exchange = %s AND routing_key = %s AND expires_at >= now()",
            (exchange, routing_key),
        ).fetchall()
        return [str(row[0]) for row in rows]

    def topic_listened(self, execute: Execute, exchange: str, routing_key: str) -> bool:
        """Whether a live remote binding of the topic ``exchange`` matches ``routing_key``."""
        now = monotonic()
        cached = self._topics.get(exchange)
        if cached is None or now - cached[0] > CACHE_SECONDS:
            rows = execute(
                f"SELECT DISTINCT routing_key FROM {self._names.binding}"
                " WHERE exchange = %s AND expires_at >= now()",
                (exchange,),
            ).fetchall()
            cached = self._topics[exchange] = (now, [str(row[0]) for row in rows])
        return any(
            self._matcher._match(self._matcher.key_to_pattern(key), routing_key)
            for key in cached[1]
        )
