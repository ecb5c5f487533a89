"""Who the backlog belongs to: pending messages per tenant, and tasks held back by a limit.

Two reads of the broker tables, shared by ``/metrics`` and the dashboard's queue page:

* :func:`tenant_backlog`: per queue, the :data:`TOP_TENANTS` tenants with the most ready
  messages (ready as in ``celery_queue_length``: visible and due). Global tasks (no tenant)
  are one group, :data:`GLOBAL_GROUP`.
* :func:`limit_waits`: per queue and limited task, the ready messages that a worker would
  leave in the queue now because their concurrency key is at its limit (slots are counted the
  way the claim counts them: holders in ``pgcelery_limit_state`` whose message is still under
  a live lease) or their rate key's next start is still to come. Messages of a key with a free
  slot are not counted: they are only waiting for a worker.

Both are one statement each, run with whatever executes SQL for the caller (``%(name)s``
parameters: psycopg's own style, and SQLAlchemy's ``exec_driver_sql`` on psycopg). The second
reads only ``ix_kombu_message_limited``, which is empty while no task has a limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pgcelery.schema.names import LIMIT_STATE_TABLE, LIMITED, Names

#: Tenants listed per queue on the dashboard, and series of ``pgcelery_tenant_pending`` in one
#: scrape (the biggest backlogs over all queues): tenant ids are unbounded, this keeps the
#: label set small.
TOP_TENANTS = 10
#: The group of messages that belong to no tenant (tenant ids are UUIDs: never this).
GLOBAL_GROUP = "global"
#: Limit keys looked at by one read, those with the most ready messages first: a key per
#: account can mean many thousands of keys, each costing a look at its state row.
KEYS_EXAMINED = 1000
#: Rows of (queue, task) returned at most; task names are bounded, this is a safety net.
WAIT_ROWS = 200
#: Broker-internal queues (remote control, events): not task queues, never limited.
INTERNAL_QUEUE_PATTERNS = ("%.pidbox", "celeryev.%", "celery@%")
#: A tenant id longer than this (a message written behind pgcelery's back) is cut here.
_TENANT_CHARS = 64

#: Runs one statement with ``%(name)s`` parameters and returns its rows.
Fetch = Callable[[str, Mapping[str, Any]], Sequence[Sequence[Any]]]


@dataclass(frozen=True)
class TenantBacklog:
    """Ready messages of one tenant (or of global tasks) in one queue."""

    queue: str
    tenant: str
    pending: int

    @property
    def is_global(self) -> bool:
        return self.tenant == GLOBAL_GROUP


@dataclass(frozen=True)
class LimitWait:
    """Ready messages of one limited task in one queue that no worker may start now."""

    queue: str
    task: str
    waiting: int


def tenant_backlog_sql(names: Names) -> str:
    ready = "m.visible AND m.visible_at <= now()"
    return f"""
SELECT q.name, t.tenant_id, t.pending
FROM (
  SELECT m.queue_id, m.tenant_id, count(*) AS pending,
         row_number() OVER (PARTITION BY m.queue_id
                            ORDER BY count(*) DESC, m.tenant_id NULLS FIRST) AS rank
  FROM {names.message} m WHERE {ready}
  GROUP BY m.queue_id, m.tenant_id
) t JOIN {names.queue} q ON q.id = t.queue_id
WHERE t.rank <= %(top)s AND q.name NOT LIKE ALL(%(internal)s::text[])
ORDER BY q.name, t.pending DESC, t.tenant_id NULLS FIRST
"""


def limit_waits_sql(names: Names) -> str:
    state = f'"{names.schema}"."{LIMIT_STATE_TABLE}"'
    # What holds a slot, as pgcelery_claim_limited reads it: a holder still under its lease.
    live = "x.lease_token IS NOT NULL AND x.visible_at > now()"
    return f"""
WITH keyed AS (
  SELECT m.queue_id, m.limit_task, m.concurrency_key, m.concurrency_limit, m.rate_key,
         count(*) AS ready
  FROM {names.message} m
  WHERE {LIMITED} AND m.visible AND m.visible_at <= now()
  GROUP BY 1, 2, 3, 4, 5
  ORDER BY ready DESC LIMIT %(keys)s
), held_back AS (
  SELECT k.queue_id, k.limit_task, k.ready FROM keyed k
  WHERE (k.concurrency_key IS NOT NULL AND k.concurrency_limit <= (
           SELECT count(*) FROM {state} s CROSS JOIN LATERAL unnest(s.holders) AS h(id)
           WHERE s.key = 'c:' || k.concurrency_key
             AND EXISTS (SELECT 1 FROM {names.message} x WHERE x.id = h.id AND {live})))
     OR (k.rate_key IS NOT NULL AND EXISTS (
           SELECT 1 FROM {state} s WHERE s.key = 'r:' || k.rate_key AND s.next_at > now()))
)
SELECT q.name, coalesce(w.limit_task, ''), sum(w.ready)::bigint
FROM held_back w JOIN {names.queue} q ON q.id = w.queue_id
GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT %(rows)s
"""


def tenant_backlog(fetch: Fetch, names: Names, top: int = TOP_TENANTS) -> list[TenantBacklog]:
    """Per queue (by name), its ``top`` biggest tenant backlogs, biggest first."""
    rows = fetch(tenant_backlog_sql(names), {"top": top, "internal": list(INTERNAL_QUEUE_PATTERNS)})
    return [
        TenantBacklog(
            str(queue), GLOBAL_GROUP if tenant is None else str(tenant)[:_TENANT_CHARS], int(n)
        )
        for queue, tenant, n in rows
    ]


def limit_waits(fetch: Fetch, names: Names) -> list[LimitWait]:
    """Ready messages held back by their limit, per (queue, task), most first."""
    rows = fetch(limit_waits_sql(names), {"keys": KEYS_EXAMINED, "rows": WAIT_ROWS})
    return [LimitWait(str(queue), str(task), int(n)) for queue, task, n in rows]


def biggest(backlogs: Sequence[TenantBacklog], top: int = TOP_TENANTS) -> list[TenantBacklog]:
    """The ``top`` biggest backlogs over all queues (the series ``/metrics`` exports)."""
    return sorted(backlogs, key=lambda b: (-b.pending, b.queue, b.tenant))[:top]


_Row = TypeVar("_Row", TenantBacklog, LimitWait)


def by_queue(rows: Sequence[_Row]) -> dict[str, list[_Row]]:
    """``rows`` grouped by queue name, in their order."""
    grouped: dict[str, list[_Row]] = {}
    for row in rows:
        grouped.setdefault(row.queue, []).append(row)
    return grouped
