"""Result retention: task and group results older than ``result_expires`` are deleted.

One batch is one short statement on its own transaction, skipping rows another transaction
holds, so pruning never blocks a worker storing a result. The cutoff is computed by the
database, whose clock also stamped ``date_done`` (UTC, without a time zone, as Celery stores
it). Two callers share this: ``maintenance.prune_results`` (sent by beat) and every worker's
pruner (:mod:`pgcelery.scheduling.pruning`), which runs whether or not beat does.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

from pgcelery import connections
from pgcelery.schema.names import Names

#: Rows deleted per statement: small enough that no statement holds locks for long.
PRUNE_BATCH = 1000


def expiry_seconds(expires: Any) -> float:
    """``result_expires`` as seconds; 0 means results are kept forever."""
    if isinstance(expires, timedelta):
        return expires.total_seconds()
    return float(expires or 0)


def result_tables(names: Names) -> dict[str, str]:
    """What a prune reports → the table it deletes from."""
    return {"tasks": names.task, "groups": names.group}


def delete_expired(conn: psycopg.Connection[Any], table: str, seconds: float, limit: int) -> int:
    """Delete up to ``limit`` results of ``table`` (a ``Names`` identifier) older than
    ``seconds``, oldest first; returns how many. A no-op when ``seconds`` is 0 or less."""
    if seconds <= 0:
        return 0
    cur = conn.execute(
        f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table}"
        " WHERE date_done < timezone('UTC', now()) - make_interval(secs => %s)"
        " ORDER BY date_done LIMIT %s FOR UPDATE SKIP LOCKED)",
        (seconds, limit),
    )
    return cur.rowcount


#: A fired chord's row outlives the firing this long: a header task redelivered after the body
#: was sent (its worker died before the ack) finds the chord fired and counts nothing. Without
#: the row it would count nothing either; the row is kept only to say why.
FIRED_CHORD_RETENTION = 3600.0
#: An unfired chord is abandoned after its results expire (its body could never be joined);
#: with results kept forever, after this long.
UNFIRED_CHORD_RETENTION = 30 * 86400.0


def delete_old_chords(conn: psycopg.Connection[Any], names: Names, result_expires: float) -> int:
    """Delete up to :data:`PRUNE_BATCH` chords fired over an hour ago or abandoned (their
    counted parts go with them, ``ON DELETE CASCADE``); returns how many."""
    unfired = result_expires if result_expires > 0 else UNFIRED_CHORD_RETENTION
    cur = conn.execute(
        f"DELETE FROM {names.chord} WHERE group_id IN (SELECT group_id FROM {names.chord}"
        " WHERE fired_at < now() - make_interval(secs => %s)"
        " OR created_at < now() - make_interval(secs => %s)"
        " LIMIT %s FOR UPDATE SKIP LOCKED)",
        (FIRED_CHORD_RETENTION, max(unfired, FIRED_CHORD_RETENTION), PRUNE_BATCH),
    )
    return cur.rowcount


def prune_expired(
    conninfo: str, names: Names, seconds: float, batch_size: int = PRUNE_BATCH
) -> dict[str, int]:
    """Delete every expired task and group result, batch by batch; returns the counts."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    counts = dict.fromkeys(result_tables(names), 0)
    if seconds <= 0:  # result_expires of 0/None means keep results forever
        return counts
    for key, table in result_tables(names).items():
        while True:
            # A connection per batch: autocommit, so each batch commits on its own.
            with connections.pool(conninfo).connection() as conn:
                deleted = delete_expired(conn, table, seconds, batch_size)
            counts[key] += deleted
            if deleted < batch_size:
                break
    return counts
