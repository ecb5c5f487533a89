"""The claim statement: fair across tenants or in plain order, with limited messages apart.

One statement, one round trip, does all of a claim:

1. deletes the acks that ride along (:mod:`pgcelery.broker.acks`);
2. claims the *limited* messages it may (``pgcelery_claim_limited``, revision
   ``0012_fair_limits``): those of tasks with a ``concurrency_limit`` or ``global_rate_limit``.
   It goes from one key to the next, starting after the key this channel's last claim stopped
   at. Each key's state row is locked while the claim decides, so two workers never take the
   same free slot or the same rate token; a key at its limit is passed over, its messages stay
   in the queue unleased, and the claim goes on to other work;
3. fills the rest of the batch with unlimited messages: in order (highest priority, then
   oldest), or, with fair share on, from one tenant group after another at the top priority
   (``pgcelery_claim_fair``), starting after the group this channel's last claim stopped in,
   each group taking its weight's worth of messages a turn;
4. leases what it took, reads the broadcast head, and returns one more row without a message
   when a rate limit will let a message start later: its ``wait`` is the seconds until then, so
   the worker claims again at that moment instead of polling.

See docs/explanation/fair-share-and-limits.md for the guarantees and their limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pgcelery.schema.names import LIMITED, Names

#: Columns of a claimed row, in order (:func:`pgcelery.broker.delivery.sort_claimed` reads the
#: first eight).
ROW = (
    "id",
    "queue_id",
    "lease_token",
    "deliveries",
    "payload",
    "head",
    "previous",
    "priority",
    "grp",
    "seq",
    "turn",
    "wait",
)
WAIT = ROW.index("wait")
GROUP = ROW.index("grp")
SEQ = ROW.index("seq")
TURN = ROW.index("turn")


@dataclass(frozen=True)
class ClaimSql:
    names: Names

    def _statement(self, unlimited: str) -> str:
        m = self.names.message
        limited = self.names.function("pgcelery_claim_limited")
        return (
            # Pending acks ride along: the DELETE touches only rows this channel holds leased,
            # which the claim below cannot select (their visible_at is in the future).
            f"WITH acked AS (DELETE FROM {m} m"
            " USING unnest(%(acked_ids)s::bigint[], %(acked_tokens)s::uuid[]) AS a(id, token)"
            " WHERE m.id = a.id AND m.lease_token = a.token),"
            # Acked ids are passed on: their slots are free even though this statement's
            # snapshot still shows their rows.
            f" lim AS (SELECT l.id, l.wait, l.queue, l.grp FROM {limited}"
            "(%(queues)s::int[], %(limited_afters)s::text[], %(acked_ids)s::bigint[],"
            " %(limit)s) l"
            # Not even called while no limited message waits (the partial index is empty).
            f" WHERE EXISTS (SELECT 1 FROM {m} e WHERE e.queue_id = ANY(%(queues)s::int[])"
            f" AND {LIMITED.replace('m.', 'e.')})),"
            f" u AS ({unlimited}),"
            " c AS (SELECT l.id, p.claimed_by AS previous, NULL::text AS grp, NULL::bigint AS seq,"
            f" NULL::integer AS turn FROM lim l JOIN {m} p ON p.id = l.id"
            " UNION ALL (SELECT u.id, u.previous, u.grp, u.seq, u.turn FROM u"
            " ORDER BY u.priority DESC, u.seq, u.id"
            " LIMIT greatest(%(limit)s - (SELECT count(l.id) FROM lim l), 0))),"
            # Same statement, same snapshot as the claim (broadcast ids commit in id order).
            f" h AS (SELECT coalesce(max(id), 0) AS head FROM {self.names.broadcast}),"
            f" leased AS (UPDATE {m} m SET visible_at = now() + make_interval(secs => %(lease)s),"
            " lease_token = gen_random_uuid(), deliveries = m.deliveries + 1,"
            " claimed_by = %(claimant)s"
            " FROM c CROSS JOIN h WHERE m.id = c.id"
            # A payload over the size limit is never sent to the worker (it is buried unread).
            " RETURNING m.id, m.queue_id, m.lease_token, m.deliveries,"
            " CASE WHEN octet_length(m.payload) <= %(max_bytes)s THEN m.payload END, h.head,"
            " c.previous, m.priority, c.grp, c.seq, c.turn)"
            " SELECT leased.*, NULL::double precision AS wait FROM leased"
            # Rows without a message: a rate limit's wait, or where a queue's rotation of
            # limited keys stopped (queue_id and grp).
            " UNION ALL SELECT NULL, l.queue, NULL, NULL, NULL, NULL, NULL, NULL, l.grp, NULL,"
            " NULL, l.wait FROM lim l WHERE l.id IS NULL"
        )

    @cached_property
    def in_order(self) -> str:
        """Params: acked_ids, acked_tokens, queues, limited_afters (each queue's last limited
        key), limit, lease, claimant, max_bytes."""
        m = self.names.message
        in_order = self.names.function("pgcelery_claim_in_order")
        return self._statement(
            "SELECT f.id, p.claimed_by AS previous, p.priority, NULL::text AS grp,"
            " NULL::bigint AS seq, NULL::integer AS turn"
            " FROM unnest(%(queues)s::int[]) AS qs(queue_id)"
            f" CROSS JOIN LATERAL {in_order}(qs.queue_id, %(limit)s) f"
            f" JOIN {m} p ON p.id = f.id"
        )

    @cached_property
    def fair(self) -> str:
        """Params: those of :attr:`in_order`, and afters, useds (each queue's cursor)."""
        m = self.names.message
        fair = self.names.function("pgcelery_claim_fair")
        return self._statement(
            "SELECT f.id, p.claimed_by AS previous, p.priority, f.grp, f.seq, f.turn"
            " FROM unnest(%(queues)s::int[], %(afters)s::text[], %(useds)s::int[])"
            " AS qs(queue_id, after, used)"
            f" CROSS JOIN LATERAL {fair}(qs.queue_id, %(limit)s, qs.after, qs.used)"
            " WITH ORDINALITY AS f(id, grp, turn, seq)"
            f" JOIN {m} p ON p.id = f.id"
        )


@dataclass
class FairCursors:
    """Where each queue's rotations stopped: the last tenant group served and how many messages
    of its turn it took, and the last limited key visited. Kept per channel: each worker goes
    round on its own, which is fair for each, and so for all of them together, without a row
    every claim must update."""

    after: dict[int, tuple[str, int]] = field(default_factory=dict)

    #: Per queue, the limited key the last claim's rotation stopped at.
    limited_after: dict[int, str] = field(default_factory=dict)

    def params(self, queue_ids: list[int]) -> dict[str, Any]:
        cursors = [self.after.get(q, (None, 0)) for q in queue_ids]
        return {
            "afters": [c[0] for c in cursors],
            "useds": [c[1] for c in cursors],
            "limited_afters": [self.limited_after.get(q) for q in queue_ids],
        }

    def stopped(self, queue_id: int, key: str) -> None:
        """The limited claim's rotation of ``queue_id`` stopped at ``key``."""
        self.limited_after[queue_id] = key

    def advance(self, rows: list[tuple[Any, ...]]) -> None:
        """Move each queue's cursor to the group of the last message ``rows`` claimed from it,
        and how far into that group's turn it was."""
        last: dict[int, tuple[Any, ...]] = {}
        for row in rows:
            if row[GROUP] is not None and (row[1] not in last or row[SEQ] > last[row[1]][SEQ]):
                last[row[1]] = row
        for queue_id, row in last.items():
            self.after[queue_id] = (row[GROUP], row[TURN])
