"""Rows of ``celery_taskmeta``: a task's state encoded into columns, and a row decoded into meta.

The encoding and decoding are those of Celery's ``DatabaseBackend`` (its ``_update_result`` and
``_get_task_meta_for``), column for column, so rows written by stock Celery and by pgcelery read
the same either way; only the I/O differs: plain SQL on psycopg, no ORM. The statements are
built once per backend from the schema's quoted names.

Columns written, as Celery's row classes map them: ``status``, ``result``, ``traceback`` and
``children`` always; with ``result_extended`` also ``name``, ``args``, ``kwargs``, ``worker``,
``retries``, ``queue`` and ``stamps`` (without it those columns keep whatever they hold).
``date_done`` is the database's clock in UTC, as :mod:`pgcelery.results.retention` compares it.
"""

from __future__ import annotations

from typing import Any, Protocol

from celery import states
from kombu.utils.encoding import ensure_bytes

from pgcelery.schema.names import Names

#: Written for every result (Celery's ``Task`` row class).
BASE_COLUMNS = ("status", "result", "traceback", "children")
#: Written as well with ``result_extended`` (Celery's ``TaskExtended``).
EXTENDED_COLUMNS = ("name", "args", "kwargs", "worker", "retries", "queue", "stamps")
#: Of the extended columns, those a meta carries as they are (no encoding, no renaming).
_PLAIN_EXTENDED = ("name", "args", "kwargs", "worker", "retries", "queue")


class Codec(Protocol):
    """What of a Celery backend the rows need: its serializer and its result meta."""

    def encode(self, data: Any) -> Any: ...

    def decode(self, payload: Any) -> Any: ...

    def meta_from_decoded(self, meta: dict[str, Any]) -> dict[str, Any]: ...

    def _get_result_meta(
        self,
        result: Any,
        state: str,
        traceback: str | None,
        request: Any,
        format_date: bool = True,
        encode: bool = False,
    ) -> dict[str, Any]: ...


class TaskRows:
    """The columns, statements and encoding of one backend's ``celery_taskmeta``."""

    def __init__(self, codec: Codec, names: Names, extended: bool) -> None:
        self._codec = codec
        self._names = names
        self.extended = extended
        #: The columns a result writes, in the order of :meth:`values` (``tenant_id`` apart).
        self.columns = BASE_COLUMNS + (EXTENDED_COLUMNS if extended else ())
        #: The columns a read selects, in the order :meth:`meta` takes them.
        self.read_columns = (*self.columns, "date_done")
        quoted = ", ".join(f'"{name}"' for name in self.read_columns)
        self.sql_select = f"SELECT {quoted} FROM {names.task} WHERE task_id = %s"
        #: Params: task ids. Rows: ``task_id``, then :meth:`meta`'s columns.
        self.sql_select_many = f"SELECT task_id, {quoted} FROM {names.task} WHERE task_id = ANY(%s)"
        #: Params: task id, :meth:`values`, tenant id.
        self.sql_upsert = self.upsert("%s", ["%s"] * (len(self.columns) + 1))
        self.sql_exists = f"SELECT 1 FROM {names.task} WHERE task_id = %s"
        self.sql_forget = f"DELETE FROM {names.task} WHERE task_id = %s"

    def upsert(self, task: str, params: list[str]) -> str:
        """The statement that stores a result: ``task`` and ``params`` are its placeholders
        (the task id; the values of :attr:`columns`, then the tenant id)."""
        # One statement, one round trip: insert, or update unless a SUCCESS is already stored
        # (Celery's rule: a repeated run never replaces a stored result).
        names = self._names
        columns = ", ".join(f'"{c}"' for c in (*self.columns, "tenant_id"))
        updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in (*self.columns, "date_done"))
        updates += ", tenant_id = coalesce(EXCLUDED.tenant_id, t.tenant_id)"
        return (
            f"INSERT INTO {names.task} AS t (id, task_id, {columns}, date_done)"
            f" VALUES (nextval('{names.sequence('task_id_sequence')}'), {task},"
            f" {', '.join(params)}, now() AT TIME ZONE 'UTC')"
            f" ON CONFLICT (task_id) DO UPDATE SET {updates} WHERE t.status <> 'SUCCESS'"
        )

    def values(
        self, result: Any, state: str, traceback: str | None = None, request: Any = None
    ) -> list[Any]:
        """The values of :attr:`columns` for a result (already prepared by ``encode_result``),
        encoded as Celery's ``DatabaseBackend._update_result`` encodes them."""
        codec = self._codec
        meta = codec._get_result_meta(
            result=ensure_bytes(codec.encode(result)),
            state=state,
            traceback=traceback,
            request=request,
            format_date=False,
            encode=True,  # args and kwargs as serialized bytes
        )
        children = meta.get("children")
        row: dict[str, Any] = {
            "status": meta.get("status"),
            "result": meta.get("result"),
            "traceback": meta.get("traceback"),
            "children": ensure_bytes(codec.encode(children)) if children else None,
        }
        if self.extended:
            row.update((name, meta.get(name)) for name in _PLAIN_EXTENDED)
            stamped = meta.get("stamped_headers")
            row["stamps"] = (
                ensure_bytes(
                    codec.encode(
                        {
                            "stamped_headers": stamped,
                            "stamps": {h: meta.get(h) for h in stamped if h in meta},
                        }
                    )
                )
                if stamped
                else None
            )
        return [row[name] for name in self.columns]

    def meta(self, task_id: str, found: tuple[Any, ...] | None) -> dict[str, Any]:
        """A row of :attr:`read_columns` (None: no row) decoded into the task's meta, as
        Celery's ``DatabaseBackend._get_task_meta_for`` decodes it: PENDING for a missing row."""
        codec = self._codec
        stored: dict[str, Any] = dict.fromkeys(self.read_columns)
        if found is None:
            stored["status"] = states.PENDING
        else:
            stored.update(zip(self.read_columns, found, strict=True))
        data: dict[str, Any] = {
            "task_id": task_id,
            "status": stored["status"],
            # Never unpickled: Celery falls back to pickle.loads for a result that does not
            # decode; here such a row raises instead.
            "result": self._decode(stored["result"]),
            "traceback": stored["traceback"],
            "date_done": stored["date_done"],
            "children": self._decode(stored["children"]),
        }
        if self.extended:
            data.update((name, stored[name]) for name in _PLAIN_EXTENDED)
            data["args"] = self._decode(stored["args"])
            data["kwargs"] = self._decode(stored["kwargs"])
            self._merge_stamps(data, stored["stamps"])
        return codec.meta_from_decoded(data)

    def _decode(self, payload: Any) -> Any:
        return None if payload is None else self._codec.decode(ensure_bytes(payload))

    def _merge_stamps(self, data: dict[str, Any], raw: Any) -> None:
        # As Celery: stamps that do not decode are left out, not an error reading the result.
        if raw is None:
            return
        try:
            info = self._decode(raw)
        except Exception:
            return
        if isinstance(info, dict):
            if "stamped_headers" in info:
                data["stamped_headers"] = info["stamped_headers"]
            if isinstance(info.get("stamps"), dict):
                data.update(info["stamps"])
