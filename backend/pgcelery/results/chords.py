"""Chords joined in PostgreSQL: counted in the transaction that stores each header result, the
body fired once, in the transaction that marks the chord fired.

Celery joins a chord on a database backend with ``celery.chord_unlock``, a task that polls the
header's results once a second. The Redis backend joins natively: every header task bumps a
counter when it finishes, and the one that completes it sends the body. This module does the
same in SQL, with what a key-value store cannot give:

- **counted once.** A header task counts itself by inserting ``(group_id, task_id)`` into
  ``pgcelery_chord_part``; a redelivered task (its worker was killed before the ack) finds its
  row there and counts nothing, so ``done`` never overshoots. The count rides in the same
  statement as the task's result.
- **fired once, never lost.** Firing is ``UPDATE … SET fired_at = now() WHERE done >= size AND
  fired_at IS NULL`` under the chord row's lock, and the body's message is inserted on the same
  connection inside the same transaction (transactional enqueue). Either both commit or
  neither: a worker killed in between leaves the chord unfired and its header task unacked, and
  the redelivered task (which counts nothing) fires it.

Celery's chord semantics are kept: the body gets the header's results in header order; a
failed header task fails the body with ``ChordError("Dependency <id> raised …")`` and calls its
``link_error`` callbacks (Celery's ``chord_error_from_stack``); an empty header never comes here
(Celery sends the body at once).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
from celery import states
from celery.canvas import maybe_signature
from celery.exceptions import ChordError
from celery.result import AsyncResult, GroupResult, ResultSet, allow_join_result, result_from_tuple

from pgcelery.broker.caller_transaction import enqueue_using
from pgcelery.schema.names import Names

log = logging.getLogger(__name__)


class ChordSql:
    """The statements of one schema's chord tables."""

    def __init__(self, names: Names) -> None:
        chord, part = names.chord, names.chord_part
        # Reapplying a frozen chord reuses its group id but is a new run: start it afresh.
        self.create = (
            f"WITH cleared AS (DELETE FROM {part} WHERE group_id = %(group)s)"
            f" INSERT INTO {chord} (group_id, header) VALUES (%(group)s, %(header)s)"
            " ON CONFLICT (group_id) DO UPDATE SET header = EXCLUDED.header, size = NULL,"
            " done = 0, fired_at = NULL, created_at = now()"
        )
        self.set_size = f"UPDATE {chord} SET size = %s WHERE group_id = %s"
        # Appended to the result's upsert (see count_with): one round trip stores and counts.
        # The UPDATE always touches the row (done + 0 for a repeat), so its RETURNING says
        # whether the chord is complete and unfired, whoever counted last.
        self.count_part = (
            f"part AS (INSERT INTO {part} (group_id, task_id)"
            f" SELECT %(group)s, %(task)s WHERE EXISTS"
            f" (SELECT 1 FROM {chord} WHERE group_id = %(group)s)"
            " ON CONFLICT DO NOTHING RETURNING 1)"
            f" UPDATE {chord} SET done = done + (SELECT count(*) FROM part)"
            " WHERE group_id = %(group)s"
            " RETURNING size IS NOT NULL AND done >= size AND fired_at IS NULL"
        )
        self.fire = (
            f"UPDATE {chord} SET fired_at = now()"
            " WHERE group_id = %s AND size IS NOT NULL AND done >= size AND fired_at IS NULL"
            " RETURNING header"
        )

    def count_with(self, upsert: str) -> str:
        """``upsert`` (the result's INSERT … ON CONFLICT) and this task's count, as one
        statement; parameters by name: ``%(group)s``, ``%(task)s`` and the upsert's own."""
        return f"WITH stored AS ({upsert} RETURNING 1), {self.count_part}"


def header_json(header: GroupResult) -> str:
    """The header's member ids and structure, as stored in ``pgcelery_chord.header``."""
    return json.dumps(header.as_tuple())


def _failed_member(header: ResultSet) -> AsyncResult | None:
    """The first header task, in header order, whose failure propagates; inner groups'
    members are searched too. (Celery's ``_failed_join_report`` only sees cached results,
    and result caching is off by default.)"""
    for member in header.results:
        if isinstance(member, ResultSet):
            found = _failed_member(member)
            if found is not None:
                return found
        elif member.state in states.PROPAGATE_STATES:
            return member
    return None


def fire(
    backend: Any,
    conn: psycopg.Connection[Any],
    sql: ChordSql,
    request: Any,
    join_timeout: float | None,
) -> bool:
    """Send the chord's body if it is complete and unfired; True if this call fired it.

    ``conn`` is an autocommit connection: the fired mark, the body's message and any error
    callbacks' messages commit together in one transaction on it.
    """
    app = backend.app
    group_id = request.group
    with conn.transaction():
        row = conn.execute(sql.fire, (group_id,)).fetchone()
        if row is None:
            return False
        header = result_from_tuple(json.loads(row[0]), app)
        callback = maybe_signature(request.chord, app=app)
        with enqueue_using(conn):
            try:
                with allow_join_result():
                    results = header.join_native(timeout=join_timeout, propagate=True)
            except Exception as exc:  # a header task failed: the body fails, as in Celery
                culprit = _failed_member(header)
                reason = repr(exc) if culprit is None else f"Dependency {culprit.id} raised {exc!r}"
                log.info(
                    "pgcelery.chord.failed",
                    extra={"event": "pgcelery.chord.failed", "group_id": group_id},
                )
                backend.chord_error_from_stack(callback, ChordError(reason))
            else:
                callback.delay(results)
    return True
