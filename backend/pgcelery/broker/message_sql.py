"""The statements the transport runs on ``kombu_queue`` and ``kombu_message``.

Built once per schema from :class:`~pgcelery.schema.tables.Names` (validated, quoted identifiers);
every value is a bind parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from pgcelery.schema.names import Names

#: A message that is waiting: not deleted by stock kombu, and not leased (or its lease ran out).
_READY = "visible AND visible_at <= now()"
#: The columns an INSERT of a message fills.
_COLUMNS = (
    "id, visible, timestamp, payload, version, queue_id, priority, visible_at, tenant_id,"
    " concurrency_key, concurrency_limit, rate_key, rate_interval, limit_task"
)


@dataclass(frozen=True)
class MessageSql:
    names: Names

    @cached_property
    def put(self) -> str:
        """Params: payload, queue id, priority, due time (None: now), tenant id (None: global),
        then the limit columns (:class:`~pgcelery.broker.limits.LimitColumns`).

        A message due later (Celery's ``eta``/``countdown``) waits here, invisible and leased
        by no one, until it is due: no worker holds it, so none can hoard it or take it down
        with it when killed.
        """
        return (
            f"INSERT INTO {self.names.message}"
            f" ({_COLUMNS})"
            f" VALUES (nextval('{self.names.sequence('message_id_sequence')}'),"
            " true, now() AT TIME ZONE 'UTC', %s, 1, %s, %s,"
            " greatest(now(), coalesce(%s::timestamptz, now())), %s, %s, %s, %s, %s, %s)"
        )

    @cached_property
    def put_many(self) -> str:
        """Param: a JSON array of ``[payload, queue id, priority, due time, tenant id, limit
        columns...]``:
        :attr:`put` for many messages in one statement, ids in array order. (One JSON text,
        because psycopg builds array parameters element by element in Python: 0.16 ms a
        message.)"""
        return (
            f"INSERT INTO {self.names.message}"
            f" ({_COLUMNS})"
            f" SELECT nextval('{self.names.sequence('message_id_sequence')}'),"
            " true, now() AT TIME ZONE 'UTC', m->>0, 1, (m->>1)::int, (m->>2)::smallint,"
            " greatest(now(), coalesce((m->>3)::timestamptz, now())), m->>4, m->>5,"
            " (m->>6)::int, m->>7, (m->>8)::float8, m->>9"
            " FROM json_array_elements(%s::json) AS r(m)"
        )

    @cached_property
    def delete_held(self) -> str:
        """Params: ids, lease tokens. Deletes only what those leases still hold (fencing)."""
        return (
            f"DELETE FROM {self.names.message} m"
            " USING unnest(%s::bigint[], %s::uuid[]) AS a(id, token)"
            " WHERE m.id = a.id AND m.lease_token = a.token"
        )

    @cached_property
    def delete_one(self) -> str:
        """Params: id, lease token."""
        return f"DELETE FROM {self.names.message} WHERE id = %s AND lease_token = %s"

    @cached_property
    def hand_back(self) -> str:
        """Params: ids, lease tokens. Gives back held messages whose tasks never started:
        claimable at once, and the delivery not counted against the message's limit."""
        return (
            f"UPDATE {self.names.message} m SET visible_at = now(), lease_token = NULL,"
            " deliveries = greatest(m.deliveries - 1, 0)"
            " FROM unnest(%s::bigint[], %s::uuid[]) AS r(id, token)"
            " WHERE m.id = r.id AND m.lease_token = r.token"
        )

    @cached_property
    def release(self) -> str:
        """Params: ids, lease tokens. Gives held messages back, claimable at once."""
        return (
            f"UPDATE {self.names.message} m SET visible_at = now(), lease_token = NULL"
            " FROM unnest(%s::bigint[], %s::uuid[]) AS r(id, token)"
            " WHERE m.id = r.id AND m.lease_token = r.token"
        )

    @cached_property
    def create_queue(self) -> str:
        """Params: name, name."""
        q = self.names.queue
        return (
            f"INSERT INTO {q} (id, name)"
            f" SELECT nextval('{self.names.sequence('queue_id_sequence')}'), %s"
            f" WHERE NOT EXISTS (SELECT 1 FROM {q} WHERE name = %s)"
            " ON CONFLICT (name) DO NOTHING"
        )

    @cached_property
    def queue_id(self) -> str:
        """Params: name."""
        return f"SELECT id FROM {self.names.queue} WHERE name = %s"

    @cached_property
    def size(self) -> str:
        """Params: queue id."""
        return f"SELECT count(*) FROM {self.names.message} WHERE queue_id = %s AND {_READY}"

    @cached_property
    def purge(self) -> str:
        """Params: queue id. Waiting messages only; leased ones finish or come back."""
        return f"DELETE FROM {self.names.message} WHERE queue_id = %s AND {_READY}"
