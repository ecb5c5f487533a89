"""The result backend: Celery's ``db+`` backend on pooled connections, woken by NOTIFY.

Stock ``DatabaseBackend`` opens a new connection for every result outside a forked worker,
takes three round trips to store one, creates tables on first use, and ``AsyncResult.get()``
polls every half second. This subclass keeps Celery's tables, encoding and semantics (a stored
SUCCESS is never overwritten) and changes how: one engine per process, an UPDATE-or-INSERT,
no table creation ever, and waiting on the result trigger's NOTIFY.
"""

from __future__ import annotations

import os
import threading
from functools import cached_property, partial
from time import monotonic, sleep
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
from pgcelery.broker import listener
from pgcelery.observability import redaction
from pgcelery.results.deferred_start import DeferredStarts
from pgcelery.schema.tables import RESULT_CHANNEL, Names
from pgcelery.tenancy.scope import current_tenant_id

#: Errors after which Celery's backend retry (``result_backend_always_retry``) tries again.
RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)

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


class _Waiters:
    """task id → events of threads waiting for that task's result, fed by the listener.

    One per process and database: a producer using two pgcelery apps on two databases is woken
    by each database's NOTIFYs. It listens while anyone waits, and stops :data:`IDLE_RELEASE`
    seconds after the last waiter left, so a database no longer used is no longer listened to.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._lock = threading.Lock()
        # Orders subscribing against releasing, so a new waiter is never left unsubscribed.
        self._subscription = threading.Lock()
        self._subscribed = False
        self._idle_since = monotonic()
        self._events: dict[str, list[threading.Event]] = {}

    def add(self, task_id: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events.setdefault(task_id, []).append(event)
        with self._subscription:
            if not self._subscribed:
                listener.subscribe(self._conninfo, RESULT_CHANNEL, self.notify)
                self._subscribed = True
                threading.Thread(
                    target=self._release_when_idle, name="pgcelery-result-waiters", daemon=True
                ).start()
        return event

    def remove(self, task_id: str, event: threading.Event) -> None:
        with self._lock:
            events = self._events.get(task_id, [])
            if event in events:
                events.remove(event)
            if not events:
                self._events.pop(task_id, None)
            if not self._events:
                self._idle_since = monotonic()

    def _release_when_idle(self) -> None:
        while True:
            sleep(IDLE_RELEASE / 3)
            with self._subscription:
                with self._lock:
                    if self._events or monotonic() - self._idle_since < IDLE_RELEASE:
                        continue
                listener.unsubscribe(self._conninfo, RESULT_CHANNEL, self.notify)
                self._subscribed = False
                return

    def notify(self, task_id: str | None) -> None:
        with self._lock:
            if task_id is None:  # reconnected: anything may have finished
                targets = [e for events in self._events.values() for e in events]
            else:
                targets = list(self._events.get(task_id, ()))
        for event in targets:
            event.set()


#: Seconds a process keeps listening for results after its last waiter is done.
IDLE_RELEASE = 30.0
_WAITERS: dict[tuple[int, str], _Waiters] = {}
_WAITERS_LOCK = threading.Lock()


def _waiters(conninfo: str) -> _Waiters:
    key = (os.getpid(), conninfo)
    with _WAITERS_LOCK:
        found = _WAITERS.get(key)
        if found is None:
            found = _WAITERS[key] = _Waiters(conninfo)
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
        with self._pool(async_commit=self._async_commit).connection() as conn:
            conn.execute(self._sql_upsert, (task_id, *values))

    @cached_property
    def _mapped(self) -> tuple[str, ...]:
        # Not the table's columns: Celery's TaskExtended extends the very Table object its plain
        # Task maps, so with result_extended off the table has columns the row class lacks.
        return tuple(c.name for c in sa.inspect(self.task_cls).columns)

    @cached_property
    def _columns(self) -> tuple[str, ...]:
        skip = {"id", "task_id", "date_done"}
        return tuple(name for name in self._mapped if name not in skip)

    @cached_property
    def _sql_upsert(self) -> str:
        # One statement, one round trip: insert, or update unless a SUCCESS is already stored
        # (Celery's rule: a repeated run never replaces a stored result).
        names = Names(self._task_table.schema or "public")
        columns = ", ".join(f'"{c}"' for c in (*self._columns, "tenant_id"))
        params = ", ".join(["%s"] * (len(self._columns) + 1))
        updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in (*self._columns, "date_done"))
        updates += ", tenant_id = coalesce(EXCLUDED.tenant_id, t.tenant_id)"
        return (
            f"INSERT INTO {names.task} AS t (id, task_id, {columns}, date_done)"
            f" VALUES (nextval('{names.sequence('task_id_sequence')}'), %s, {params},"
            " now() AT TIME ZONE 'UTC')"
            f" ON CONFLICT (task_id) DO UPDATE SET {updates} WHERE t.status <> 'SUCCESS'"
        )

    @cached_property
    def _sql_select(self) -> str:
        names = Names(self._task_table.schema or "public")
        columns = ", ".join(f'"{name}"' for name in self._mapped)
        return f"SELECT {columns} FROM {names.task} WHERE task_id = %s"

    def _query_task(self, session: Any, task_id: str, for_update: bool = False) -> Any:
        # Celery's _get_task_meta_for decodes whatever this returns; read it on the pool.
        if self._deferred_starts is not None:
            self._deferred_starts.flush(task_id)
        with self._pool().connection() as conn:
            found = conn.execute(self._sql_select, (task_id,)).fetchone()
        if found is None:
            return None
        row = self.task_cls(task_id)
        for name, value in zip(self._mapped, found, strict=True):
            setattr(row, name, value)
        return row

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
        waiters = _waiters(self._conninfo)
        event = waiters.add(task_id)
        deadline = None if timeout is None else monotonic() + timeout
        try:
            while True:
                event.clear()
                meta = self.get_task_meta(task_id)
                if meta["status"] in states.READY_STATES:
                    return meta
                if on_interval:
                    on_interval()
                wait = interval
                if deadline is not None:
                    remaining = deadline - monotonic()
                    if remaining <= 0:
                        raise CeleryTimeoutError("The operation timed out.")
                    wait = min(wait, remaining)
                event.wait(wait)
        finally:
            waiters.remove(task_id, event)


def install(app: Any) -> None:
    """Serve this app's ``db+`` result URL with :class:`PgBackend`."""
    overrides = dict(getattr(app.loader, "override_backends", {}) or {})
    overrides["db"] = f"{__name__}:PgBackend"
    app.loader.override_backends = overrides
