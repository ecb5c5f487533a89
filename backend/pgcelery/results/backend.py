"""The result backend: Celery's ``db+`` result tables on pooled psycopg connections, woken by
NOTIFY, without SQLAlchemy.

Stock ``DatabaseBackend`` goes through SQLAlchemy's ORM (about 21 MB of every worker process),
opens a new connection for every result outside a forked worker, takes three round trips to
store one, creates tables on first use, and ``AsyncResult.get()`` polls every half second. This
backend keeps its tables, the encoding of every column (:mod:`pgcelery.results.task_rows`,
:mod:`pgcelery.results.group_rows`), its semantics (a stored SUCCESS is never overwritten) and
its retry defaults, and changes how: plain SQL on the process's psycopg pool, an
UPDATE-or-INSERT, no table creation ever, and waiting on the result trigger's NOTIFY.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from functools import cached_property, partial
from typing import Any

import psycopg
from celery import states
from celery.backends.base import BaseBackend
from celery.exceptions import ImproperlyConfigured
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.utils.time import maybe_timedelta
from psycopg_pool import PoolTimeout

from pgcelery import connections, dsn
from pgcelery.observability import redaction
from pgcelery.results import chords, retention
from pgcelery.results.deferred_start import DeferredStarts
from pgcelery.results.group_rows import GroupRows
from pgcelery.results.task_rows import TaskRows
from pgcelery.results.waiters import Polling, ready_metas, waiters
from pgcelery.schema.names import Names
from pgcelery.tenancy.scope import current_tenant_id

#: Errors after which Celery's backend retry (``result_backend_always_retry``) tries again.
RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)

_DEFERRED: dict[float, DeferredStarts] = {}


def _deferred_starts(delay: float) -> DeferredStarts:
    # One per process and delay: every backend instance of a worker shares the timer thread.
    found = _DEFERRED.get(delay)
    if found is None:
        found = _DEFERRED[delay] = DeferredStarts(delay)
    return found


class PgBackend(BaseBackend):
    """Celery's database result backend, made fast and schema-safe for PostgreSQL."""

    #: Groups are read in one query per round (``get_many``), and chords joined natively.
    supports_native_join = True
    #: ``ResultSet.iterate``'s pause between members, as Celery's ``DatabaseBackend``.
    subpolling_interval = 0.5
    #: Set by Celery's ``Backend.__init__`` from ``result_backend_always_retry`` and
    #: ``result_backend_max_retries``; ``None`` when the app set them to None.
    always_retry: bool | None
    max_retries: float | None

    def __init__(
        self,
        dburi: str | None = None,
        engine_options: dict[str, Any] | None = None,
        url: str | None = None,
        **kwargs: Any,
    ) -> None:
        # ``dburi`` and ``engine_options`` are DatabaseBackend's arguments (its pickled form
        # passes them); there is no engine, so its options go unused.
        super().__init__(expires_type=maybe_timedelta, url=url, **kwargs)
        conf = self.app.conf
        # DatabaseBackend's retry defaults (always retry, 3 times) unless the app set its own.
        if not conf.value_set_for("result_backend_always_retry") or self.always_retry is None:
            self.always_retry = True
        if not conf.value_set_for("result_backend_max_retries") or self.max_retries is None:
            self.max_retries = 3
        self.url = url or dburi or conf.database_url
        if not self.url:
            raise ImproperlyConfigured(
                "Missing connection string! Do you have the database_url setting set to a real"
                " value?"
            )
        self._conninfo = dsn.libpq_url(self.url)
        # The tables' schemas as Celery reads them; their names are the migrations' own
        # (``database_table_names`` is not followed: no migration makes other tables).
        schemas = conf.database_table_schemas or {}
        names = Names(schemas.get("task") or "public")
        self.task_rows = TaskRows(self, names, extended=bool(self.extended_result))
        group_names = Names(schemas.get("group") or "public")
        self._groups = GroupRows(self, group_names)
        #: What cleanup() deletes expired results from.
        self._result_tables = (names.task, group_names.group)
        settings = getattr(self.app, "pgcelery_settings", None)
        # A result lost in a server crash is rewritten when the (also lost) ack makes the task
        # run again: WAL order puts the result's commit before the ack's.
        self._async_commit = bool(getattr(settings, "worker_async_commit", False))
        options = conf.broker_transport_options or {}
        self._transaction_pooling = not bool(options.get("listen", True))
        delay = float(getattr(settings, "started_state_delay", 0.0))
        self._deferred_starts = _deferred_starts(delay) if delay > 0 else None
        self._chord_sql = chords.ChordSql(names)
        # The chord a thread's last stored result counted in, and whether it completed it.
        self._counted = threading.local()

    @property
    def extended_result(self) -> bool:
        return bool(self.app.conf.find_value_for_key("extended", "result"))

    def __reduce__(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        kwargs.update({"dburi": self.url, "expires": self.expires})
        return super().__reduce__(args, kwargs)

    def _pool(self, async_commit: bool = False) -> Any:
        return connections.pool(
            self._conninfo,
            async_commit=async_commit,
            transaction_pooling=self._transaction_pooling,
        )

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        return isinstance(exc, RETRYABLE)

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
        values = self.task_rows.values(result, state, traceback=traceback, request=request)
        # The tenant the task runs for (bound by pgcelery.tenancy from its signed headers), for
        # row-level security on celery_taskmeta; None for a global task.
        values.append(current_tenant_id())
        group_id = getattr(request, "group", None) if getattr(request, "chord", None) else None
        if group_id and state in states.READY_STATES:
            self._store_chord_part(task_id, group_id, values)
            return
        with self._pool(async_commit=self._async_commit).connection() as conn:
            conn.execute(self.task_rows.sql_upsert, (task_id, *values))

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
    def _sql_store_and_count(self) -> str:
        named = [f"%(v{i})s" for i in range(len(self.task_rows.columns) + 1)]  # + tenant_id
        return self._chord_sql.count_with(self.task_rows.upsert("%(task)s", named))

    @property
    def sql_select_many(self) -> str:
        """Params: task ids. Rows of those tasks: ``task_id``, then :meth:`meta_from_row`'s."""
        return self.task_rows.sql_select_many

    def meta_from_row(self, task_id: str, found: tuple[Any, ...] | None) -> dict[str, Any]:
        """A row read elsewhere (in batches: get_many, the async waiters) decoded into meta."""
        return self.task_rows.meta(task_id, found)

    def _read_task(self, task_id: str) -> tuple[Any, ...] | None:
        if self._deferred_starts is not None:
            self._deferred_starts.flush(task_id)
        with self._pool().connection() as conn:
            found: tuple[Any, ...] | None = conn.execute(
                self.task_rows.sql_select, (task_id,)
            ).fetchone()
        return found

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        return self.task_rows.meta(task_id, self._read_task(task_id))

    def _metas(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored state of every one of ``task_ids``, read in one query."""
        if len(task_ids) == 1:  # AsyncResult.get(): the plain equality (= ANY cost 0.08 ms more)
            return {task_ids[0]: self._get_task_meta_for(task_ids[0])}
        if self._deferred_starts is not None:
            for task_id in task_ids:
                self._deferred_starts.flush(task_id)
        with self._pool().connection() as conn:
            rows = conn.execute(self.task_rows.sql_select_many, (task_ids,)).fetchall()
        found = {row[0]: tuple(row[1:]) for row in rows}
        return {task_id: self.meta_from_row(task_id, found.get(task_id)) for task_id in task_ids}

    def task_result_exists(self, task_id: str) -> bool:
        return bool(self._ensure_retryable(self._task_result_exists, task_id))

    def _task_result_exists(self, task_id: str) -> bool:
        if self._deferred_starts is not None:
            self._deferred_starts.flush(task_id)
        with self._pool().connection() as conn:
            return conn.execute(self.task_rows.sql_exists, (task_id,)).fetchone() is not None

    def _forget(self, task_id: str) -> None:
        if self._deferred_starts is not None:
            self._deferred_starts.settle(task_id)  # a STARTED held back must not bring it back
        with self._pool().connection() as conn:
            conn.execute(self.task_rows.sql_forget, (task_id,))

    # -- groups (pgcelery.results.group_rows) ----------------------------------------------------

    def _save_group(self, group_id: str, result: Any) -> Any:
        with self._pool().connection() as conn:
            self._groups.save(conn, group_id, result)
        return result

    def _restore_group(self, group_id: str) -> dict[str, Any] | None:
        with self._pool().connection() as conn:
            return self._groups.restore(conn, group_id)

    def _delete_group(self, group_id: str) -> None:
        with self._pool().connection() as conn:
            self._groups.delete(conn, group_id)

    # -- expiry ----------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Delete the task and group results older than ``result_expires`` (Celery's
        ``celery.backend_cleanup``), in batches (:mod:`pgcelery.results.retention`)."""
        self._ensure_retryable(self._cleanup)

    def _cleanup(self) -> None:
        seconds = retention.expiry_seconds(self.expires)
        for table in self._result_tables:
            while True:
                # A connection per batch: autocommit, so each batch commits on its own.
                with self._pool().connection() as conn:
                    deleted = retention.delete_expired(conn, table, seconds, retention.PRUNE_BATCH)
                if deleted < retention.PRUNE_BATCH:
                    break

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
