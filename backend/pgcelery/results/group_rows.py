"""Rows of ``celery_tasksetmeta``: saved group results (``GroupResult.save()``/``restore()``).

Encoded as Celery's ``DatabaseBackend`` encodes them (the group's ``as_tuple()`` serialized into
``result``) so either can read what the other saved. One difference: saving a group id again
replaces the saved group (as Celery's key-value backends do) instead of failing on the unique
``taskset_id`` (a re-applied frozen chord saves its header under the same id).
"""

from __future__ import annotations

from typing import Any

import psycopg
from celery.result import result_from_tuple
from kombu.utils.encoding import ensure_bytes

from pgcelery.schema.names import Names


class GroupRows:
    """Saving, restoring and deleting groups in one schema's ``celery_tasksetmeta``;
    ``backend`` is the Celery backend whose serializer encodes them."""

    def __init__(self, backend: Any, names: Names) -> None:
        self._backend = backend
        table = names.group
        self._save = (
            f"INSERT INTO {table} (id, taskset_id, result, date_done)"
            f" VALUES (nextval('{names.sequence('taskset_id_sequence')}'), %s, %s,"
            " now() AT TIME ZONE 'UTC')"
            " ON CONFLICT (taskset_id) DO UPDATE"
            " SET result = EXCLUDED.result, date_done = EXCLUDED.date_done"
        )
        self._restore = f"SELECT result, date_done FROM {table} WHERE taskset_id = %s"
        self._delete = f"DELETE FROM {table} WHERE taskset_id = %s"

    def save(self, conn: psycopg.Connection[Any], group_id: str, result: Any) -> None:
        """Save ``result`` (a ``GroupResult``) under ``group_id``."""
        backend = self._backend
        value = ensure_bytes(backend.encode(backend.prepare_value(result)))
        conn.execute(self._save, (group_id, value))

    def restore(self, conn: psycopg.Connection[Any], group_id: str) -> dict[str, Any] | None:
        """The saved group's meta (``taskset_id``, ``result`` as a ``GroupResult``,
        ``date_done``), or None when none is saved."""
        found = conn.execute(self._restore, (group_id,)).fetchone()
        if found is None:
            return None
        stored, date_done = found
        backend = self._backend
        # Never unpickled (Celery falls back to pickle.loads for a result that does not decode).
        value = None if stored is None else backend.decode(ensure_bytes(stored))
        return {
            "taskset_id": group_id,
            "result": None if value is None else result_from_tuple(value, backend.app),
            "date_done": date_done,
        }

    def delete(self, conn: psycopg.Connection[Any], group_id: str) -> None:
        conn.execute(self._delete, (group_id,))
