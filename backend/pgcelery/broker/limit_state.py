"""The limits' state rows (``pgcelery_limit_state``): what they hold, and how they are pruned.

A claim creates a key's row the first time it meets a message under that key and updates it
each time it starts one (:mod:`pgcelery.broker.claim_sql`). Nothing else writes the table; the
workers' pruner (:mod:`pgcelery.scheduling.pruning`, rule ``limits``) deletes the rows of keys
idle for :data:`IDLE_FOR` seconds whose slots are all free and whose next start is past, so the
table holds about as many rows as keys in use.
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgcelery.schema.names import Names

#: Seconds a key's row stays after its last claim.
IDLE_FOR = 3600


def prune_limit_state(conn: psycopg.Connection[Any], names: Names, limit: int) -> int:
    """Delete up to ``limit`` rows of idle keys; a row a claim holds is left for next time."""
    cur = conn.execute(
        f"DELETE FROM {names.limit_state} WHERE ctid = ANY(ARRAY("
        f"SELECT s.ctid FROM {names.limit_state} s"
        " WHERE s.touched_at < now() - make_interval(secs => %s)"
        " AND (s.next_at IS NULL OR s.next_at < now())"
        f" AND NOT EXISTS (SELECT 1 FROM {names.message} m WHERE m.id = ANY(s.holders)"
        " AND m.lease_token IS NOT NULL AND m.visible_at > now())"
        " LIMIT %s FOR UPDATE SKIP LOCKED))",
        (IDLE_FOR, limit),
    )
    return cur.rowcount
