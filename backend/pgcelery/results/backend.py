"""The result backend: Celery's ``db+`` backend on pooled connections, woken by NOTIFY.

Stock ``DatabaseBackend`` opens a new connection for every result outside a forked worker,
takes three round trips to store one, creates tables on first use, and ``AsyncResult.get()``
polls every half second. This subclass keeps Celery's tables, encoding and semantics (a stored
SUCCESS is never overwritten) and changes how: one engine per process, an UPDATE-or-INSERT,
no table creation ever, and waiting on the result trigger's NOTIFY.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Iterable, Iterator
from functools import cached_property, partial
from typing import Any

import psycopg
import sqlalchemy as sa
from celery import states
from celery.backends.database import DatabaseBackend
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.utils.encoding import ensure_bytes
from psycopg_pool import PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from pgcelery import connections, dsn
from pgcelery.observability import redaction
from pgcelery.results import chords
from pgcelery.results.deferred_start import DeferredStarts
from pgcelery.results.waiters import Polling, ready_metas, waiters
from pgcelery.schema.names import Names
from pgcelery.tenancy.scope import current_tenant_id

#: Errors after which Celery's backend retry (``result_backend_always_retry``) tries again.
RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)

#: A row read elsewhere, given to Celery's decoding instead of a read (see meta_from_row).
_READ_ELSEWHERE: contextvars.ContextVar[tuple[str, tuple[Any, ...] | None] | None] = (
    contextvars.ContextVar("pgcelery_row_read_elsewhere", default=None)
)
_ENGINES: dict[tuple[int, str], tuple[sa.Engine, sessionmaker[Session]]] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(url: str, options: dict[str, Any]) -> tuple[sa.Engine, sessionmaker[Session]]:
    # Keyed by pid: a prefork child must never use its parent's pooled connections.
    key = (os.getpid(), url)
    with _ENGINES_LOCK:
        found = _ENGINES.get(key)
        if found is None:
            engine = sa.create_engine(url, **options)
            found = _ENGINES[key] = (engine, sessionmaker(bind=engine))
        return found


_DEFERRED: dict[float, DeferredStarts] = {}


def _deferred_starts(delay: float) -> DeferredStarts:
    # One per process and delay: every backend instance of a worker shares the timer thread.
    found = _DEFERRED.get(delay)
    if found is None:
        found = _DEFERRED[delay] = DeferredStarts(delay)
    return found


class PgBackend(DatabaseBackend):
    """Celery's database result backend, made fast and schema-safe for PostgreSQL."""

    #: Groups are read in one query per round (``get_many``), and chords joined natively.
    supports_native_join = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Never create or alter tables: migrations own the schema.
        self.session_manager.prepared = True
        self._sync_url = self.url
        self._conninfo = dsn.libpq_url(self.url)
        self._task_table: sa.Table = self.task_cls.__table__
        settings = getattr(self.app, "pgcelery_settings", None)
        # A result lost in a server crash is rewritten when the (also lost) ack makes the task
        # run again: WAL order puts the result's commit before the ack's.
        self._async_commit = bool(getattr(settings, "worker_async_commit", False))
        options = self.app.conf.broker_transport_options or {}
        self._transaction_pooling = not bool(options.get("listen", True))
        delay = float(getattr(settings, "started_state_delay", 0.0))
        self._deferred_starts = _deferred_starts(delay) if delay > 0 else None
        self._chord_sql = chords.ChordSql(Names(self._task_table.schema or "public"))
        # The chord a thread's last stored result counted in, and whether it completed it.
        self._counted = threading.local()

    def _pool(self, async_commit: bool = False) -> Any:
        return connections.pool(
            self._conninfo,
            async_commit=async_commit,
            transaction_pooling=self._transaction_pooling,
        )

    def _create_tables(self) -> None:
        # Celery calls this from DatabaseBackend.__init__ when database_create_tables_at_setup
        # is on (its default, so on any app not made by create_app): migrations own the schema.
        return None

    def ResultSession(self, session_manager: Any = None) -> Session:
        options = {k: v for k, v in self.engine_options.items() if k != "poolclass"}
        _, factory = _engine(self._sync_url, options)
        return factory()

    def on_backend_retryable_error(self, exc: Exception) -> None:
        connections.reset(self._conninfo)

    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        # An exception's text can quote the DATABASE_URL (a driver error, a host's own message):
        # scrub it here, where every stored failure passes, not in a subclass that can be lost.
        if isinstance(result, BaseException):
            result = redaction.scrub_exception(result)
        if traceback:
            traceback = redaction.scrub(traceback)
        deferred = self._deferred_starts
        if deferred is not None:
            # Only a task's own start (the tracer passes its request); a STARTED state stored
            # on some other task's behalf (a test, a tool) is written at once.
            if state == states.STARTED and request is not None:
                deferred.defer(
                    task_id,
                    partial(
                        super().store_result, task_id, result, state, request=request, **kwargs
                    ),
                )
                return result
            deferred.settle(task_id)
        return super().store_result(
            task_id, result, state, traceback=traceback, request=request, **kwargs
        )

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> None:
        # Let Celery fill a detached row object, so the encoding of every column is its own.
        row = self.task_cls(task_id)
        self._update_result(row, result, state, traceback=traceback, request=request)
        values = [getattr(row, name) for name in self._columns]
        # The tenant the task runs for (bound by pgcelery.tenancy from its signed headers), for
        # row-level security on celery_taskmeta; None for a global task.
        values.append(current_tenant_id())
        group_id = getattr(request, "group", None) if getattr(request, "chord", None) else None
        if group_id and state in states.READY_STATES:
            self._store_chord_part(task_id, group_id, values)
            return
        with self._pool(async_commit=self._async_commit).connection() as conn:
            conn.execute(self._sql_upsert, (task_id, *values))

    def _store_chord_part(self, task_id: str, group_id: str, values: list[Any]) -> None:
        """Store a chord header task's result and count it, in one statement."""
        params: dict[str, Any] = {"task": task_id, "group": group_id}
        params.update({f"v{i}": value for i, value in enumerate(values)})
        # Never the async commit: the count must not be lost while the ack is not.
        with self._pool().connection() as conn:
            found = conn.execute(self._sql_store_and_count, params).fetchone()
        self._counted.task = task_id
        self._counted.ready = bool(found and found[0])

    @cached_property
    def _mapped(self) -> tuple[str, ...]:
        # Not the table's columns: Celery's TaskExtended extends the very Table object its plain
        # Task maps, so with result_extended off the table has columns the row class lacks.
        return tuple(c.name for c in sa.inspect(self.task_cls).columns)

    @cached_property
    def _columns(self) -> tuple[str, ...]:
        skip = {"id", "task_id", "date_done"}
        return tuple(name for name in self._mapped if name not in skip)

    def _upsert(self, task: str, params: list[str]) -> str:
        # One statement, one round trip: insert, or update unless a SUCCESS is already stored
        # (Celery's rule: a repeated run never replaces a stored result).
        names = Names(self._task_table.schema or "public")
        columns = ", ".join(f'"{c}"' for c in (*self._columns, "tenant_id"))
        updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in (*self._columns, "date_done"))
        updates += ", tenant_id = coalesce(EXCLUDED.tenant_id, t.tenant_id)"
        return (
            f"INSERT INTO {names.task} AS t (id, task_id, {columns}, date_done)"
            f" VALUES (nextval('{names.sequence('task_id_sequence')}'), {task},"
            f" {', '.join(params)}, now() AT TIME ZONE 'UTC')"
            f" ON CONFLICT (task_id) DO UPDATE SET {updates} WHERE t.status <> 'SUCCESS'"
        )

    @cached_property
    def _sql_upsert(self) -> str:
        return self._upsert("%s", ["%s"] * (len(self._columns) + 1))  # + tenant_id

    @cached_property
    def _sql_store_and_count(self) -> str:
        named = [f"%(v{i})s" for i in range(len(self._columns) + 1)]  # + tenant_id
        return self._chord_sql.count_with(self._upsert("%(task)s", named))

    @cached_property
    def _sql_select(self) -> str:
        names = Names(self._task_table.schema or "public")
        columns = ", ".join(f'"{name}"' for name in self._mapped)
        return f"SELECT {columns} FROM {names.task} WHERE task_id = %s"

    @cached_property
    def sql_select_many(self) -> str:
        """Params: task ids. Rows of those tasks: ``task_id``, then :meth:`meta_from_row`'s."""
        names = Names(self._task_table.schema or "public")
        columns = ", ".join(f'"{name}"' for name in self._mapped)
        return f"SELECT task_id, {columns} FROM {names.task} WHERE task_id = ANY(%s)"

    def meta_from_row(self, task_id: str, found: tuple[Any, ...] | None) -> dict[str, Any]:
        """Celery's own decoding of a row read elsewhere (in batches: get_many, the async
        waiters)."""
        token = _READ_ELSEWHERE.set((task_id, found))
        try:
            meta: dict[str, Any] = self._get_task_meta_for(task_id)
        finally:
            _READ_ELSEWHERE.reset(token)
        return meta

    def _query_task(self, session: Any, task_id: str, for_update: bool = False) -> Any:
        # Celery's _get_task_meta_for decodes whatever this returns; read it on the pool.
        elsewhere = _READ_ELSEWHERE.get()
        if elsewhere is not None and elsewhere[0] == task_id:
            found = elsewhere[1]
        else:
            found = self._read_task(task_id)
        if found is None:
            return None
        row = self.task_cls(task_id)
        for name, value in zip(self._mapped, found, strict=True):
            setattr(row, name, value)
        return row

    def _read_task(self, task_id: str) -> tuple[Any, ...] | None:
        if self._deferred_starts is not None:
            self._deferred_starts.flush(task_id)
        with self._pool().connection() as conn:
            found: tuple[Any, ...] | None = conn.execute(self._sql_select, (task_id,)).fetchone()
        return found

    def _metas(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored state of every one of ``task_ids``, read in one query."""
        if len(task_ids) == 1:  # AsyncResult.get(): the plain equality (= ANY cost 0.08 ms more)
            found_one = self._read_task(task_ids[0])
            return {task_ids[0]: self.meta_from_row(task_ids[0], found_one)}
        if self._deferred_starts is not None:
            for task_id in task_ids:
                self._deferred_starts.flush(task_id)
        with self._pool().connection() as conn:
            rows = conn.execute(self.sql_select_many, (task_ids,)).fetchall()
        found = {row[0]: tuple(row[1:]) for row in rows}
        return {task_id: self.meta_from_row(task_id, found.get(task_id)) for task_id in task_ids}

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        return isinstance(exc, RETRYABLE) or bool(super().exception_safe_to_retry(exc))

    def _decode_stored_result(self, payload: Any) -> Any:
        # Stock falls back to pickle.loads for rows that do not decode: never unpickle here.
        return None if payload is None else self.decode(ensure_bytes(payload))

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Any = None,
    ) -> Any:
        """Wait for the task's result; woken by NOTIFY, polling every ``interval`` as a fallback."""
        for _, meta in self.get_many([task_id], timeout, interval, no_ack, None, on_interval):
            return meta
        raise CeleryTimeoutError("The operation timed out.")  # pragma: no cover

    def get_many(
        self,
        task_ids: Iterable[str],
        timeout: float | None = None,
        interval: float | None = 0.5,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
        max_iterations: int | None = None,
        READY_STATES: frozenset[str] = states.READY_STATES,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(task_id, meta)`` as each task is ready: every round reads all the tasks
        still pending in one query, then sleeps until a NOTIFY names one of them (``interval``
        is only the fallback poll). ``GroupResult.get()``/``join_native`` and chords use it."""
        return ready_metas(
            self,
            waiters(self._conninfo),
            task_ids,
            Polling(timeout, interval, on_message, on_interval, max_iterations),
            READY_STATES,
        )

    # -- chords, joined in the database (pgcelery.results.chords) -------------------------------

    @cached_property
    def _native_chords(self) -> bool:
        # The body is published on the result's connection, in its transaction: that takes
        # the broker in the same database. Otherwise Celery's chord_unlock joins the chord.
        broker = str(self.app.conf.broker_url or "")
        scheme, _, rest = broker.partition("://")
        if not scheme.startswith("sqla+postgresql"):
            return False
        where = ("host", "port", "dbname")
        try:
            ours = psycopg.conninfo.conninfo_to_dict(self._conninfo)
            theirs = psycopg.conninfo.conninfo_to_dict(f"postgresql://{rest}")
        except psycopg.ProgrammingError:
            return False
        return all(ours.get(key) == theirs.get(key) for key in where)

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        if not self._native_chords:
            super().apply_chord(header_result_args, body, **kwargs)
            return
        self.ensure_chords_allowed()
        header = self.app.GroupResult(*header_result_args)
        params = {"group": header.id, "header": chords.header_json(header)}
        with self._pool().connection() as conn:
            conn.execute(self._chord_sql.create, params)

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        if self._native_chords:
            with self._pool().connection() as conn:
                conn.execute(self._chord_sql.set_size, (chord_size, group_id))

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> None:
        if not self._native_chords or not request.group or not request.id:
            return
        if getattr(self._counted, "task", None) == request.id:
            ready = self._counted.ready  # counted with the result it just stored
            self._counted.task = None
        else:  # a part whose result was stored elsewhere (a failed chain's tail): count it
            params = {"group": request.group, "task": request.id}
            with self._pool().connection() as conn:
                found = conn.execute(f"WITH {self._chord_sql.count_part}", params).fetchone()
            ready = bool(found and found[0])
        if ready:
            with self._pool().connection() as conn:
                chords.fire(
                    self, conn, self._chord_sql, request, self.app.conf.result_chord_join_timeout
                )


def install(app: Any) -> None:
    """Serve this app's ``db+`` result URL with :class:`PgBackend`."""
    overrides = dict(getattr(app.loader, "override_backends", {}) or {})
    overrides["db"] = f"{__name__}:PgBackend"
    app.loader.override_backends = overrides
