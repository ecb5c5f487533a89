"""Durable revoke: a task that has not started loses its message in the revoking transaction.

Celery keeps revokes in each worker's memory (``--statedb`` per host): a worker started after
the revoke, or every worker restarted, runs the task anyway. On pgcelery the queue is a table,
so :class:`PgControl` (``app.control`` of every ``create_app`` app) first deletes the waiting
messages of the revoked ids, pending or scheduled (an ETA an hour away), and records REVOKED
for them in ``celery_taskmeta``, in one transaction; then it broadcasts the revoke as Celery
does, so a worker holding one of them in its prefetch buffer skips it, and ``terminate=True``
still reaches the worker running it. ``AsyncResult.revoke()``, ``app.control.revoke``,
``celery control revoke``, Flower and ``pgcelery revoke`` all end in ``Control.broadcast``.

A message a worker holds leased (prefetched or running) is left to the broadcast (a running
task is not stopped without ``terminate``, as in Celery), and marked in the same transaction
with the header ``pgcelery_revoked``: should that worker die or restart before it skips the
task, the worker the message goes to next learns of the revoke from the message itself
(:func:`pgcelery.broker.delivery.sort_claimed`) and skips it as Celery does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery.app.control import Control
from celery.exceptions import TaskRevokedError
from celery.utils.functional import maybe_list
from kombu.utils.json import loads

from pgcelery.broker import limits
from pgcelery.schema.names import Names

log = logging.getLogger(__name__)

#: A message no worker holds: never leased, or its lease ran out.
_WAITING = "NOT (m.lease_token IS NOT NULL AND m.visible_at > now())"


def _delete_sql(names: Names) -> str:
    """Params: task ids, task ids. The scan reads each payload's JSON only when the id occurs
    in its text: a revoke is rare, and indexing every message's task id would tax every send."""
    return (
        f"DELETE FROM {names.message} m USING unnest(%s::text[]) AS r(task_id)"
        " WHERE strpos(m.payload, r.task_id) > 0"
        " AND (m.payload::jsonb #>> '{headers,id}') = r.task_id"
        f" AND {_WAITING}"
        " RETURNING r.task_id, m.payload,"
        f" (SELECT name FROM {names.queue} q WHERE q.id = m.queue_id)"
    )


def _mark_sql(names: Names) -> str:
    """Params: task ids. Marks the held messages of those tasks (see the module docstring)."""
    return (
        f"UPDATE {names.message} m SET payload = jsonb_set(m.payload::jsonb,"
        " '{headers,pgcelery_revoked}', 'true')::text"
        " FROM unnest(%s::text[]) AS r(task_id)"
        " WHERE strpos(m.payload, r.task_id) > 0"
        " AND (m.payload::jsonb #>> '{headers,id}') = r.task_id"
        f" AND NOT {_WAITING}"
    )


def _request(task_id: str, payload: str, queue: str | None) -> Any:
    from celery.app.task import Context

    try:
        headers = loads(payload).get("headers") or {}
    except (ValueError, AttributeError):
        headers = {}
    return Context(
        id=task_id,
        task=headers.get("task"),
        args=headers.get("argsrepr"),
        kwargs=headers.get("kwargsrepr"),
        delivery_info={"routing_key": queue},
    )


def revoke_waiting(app: Any, task_ids: Iterable[str], reason: str = "revoked") -> list[str]:
    """Delete the waiting messages of ``task_ids`` and store REVOKED for each, atomically.

    Returns the ids whose message was deleted. Ids of tasks running, finished or unknown are
    left alone (their results are not touched).
    """
    ids = [str(t) for t in task_ids if t]
    backend = app.backend
    rows = getattr(backend, "task_rows", None)  # None: not pgcelery's result backend
    if not ids or rows is None:
        return []
    names = Names(getattr(app.pgcelery_settings, "schema_name", "public"))
    revoked: list[str] = []
    with backend._pool().connection() as conn, conn.transaction():
        deleted = conn.execute(_delete_sql(names), (ids,)).fetchall()
        for task_id, payload, queue in deleted:
            values = rows.values(
                backend.prepare_exception(TaskRevokedError(reason)),
                "REVOKED",
                request=_request(task_id, payload, queue),
            )
            values.append(_tenant_of(payload))  # the result's tenant_id, for row-level security
            conn.execute(rows.sql_upsert, (task_id, *values))
            revoked.append(task_id)
        conn.execute(_mark_sql(names), (ids,))
    if revoked:
        log.info("pgcelery.revoke.deleted", extra={"task_ids": revoked})
    return revoked


def _tenant_of(payload: str) -> str | None:
    try:
        message = loads(payload)
    except ValueError:
        return None
    return limits.tenant_of(message) if isinstance(message, dict) else None


class PgControl(Control):  # type: ignore[misc]
    """Celery's remote control, with revokes that delete waiting messages first."""

    def broadcast(self, command: str, arguments: Any = None, *args: Any, **kwargs: Any) -> Any:
        if command == "revoke" and isinstance(arguments, dict):
            ids = maybe_list(arguments.get("task_id")) or []
            revoke_waiting(self.app, ids)
        return super().broadcast(command, arguments, *args, **kwargs)
