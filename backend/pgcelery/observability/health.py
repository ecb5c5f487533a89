"""Health checks for ``/health`` and the broker statistics for ``/metrics``.

Three checks, in order: ``database`` (PostgreSQL answers), ``broker`` (the queue and message
tables are readable) and ``schema`` (the database is at the code's migration head); then the
checks other parts register with :func:`add_check` (the app factory adds ``listener``: the
worker's LISTEN connection is up). Each run
uses one pooled connection and one transaction bounded by a short ``statement_timeout``, cheap
enough to probe every second. Reasons name the problem and never carry the password.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from pgcelery import connections, dsn
from pgcelery.observability import backlog
from pgcelery.observability.metrics import QueueStats
from pgcelery.observability.redaction import scrub
from pgcelery.schema import revisions
from pgcelery.schema.names import Names
from pgcelery.settings import Settings

log = logging.getLogger(__name__)

CHECKS = ("database", "broker", "schema")
# Queues Celery creates per client or per node for remote control and events: unbounded names.
_INTERNAL_QUEUE_PATTERNS = ("%.pidbox", "celeryev.%", "celery@%")
_MAX_REASON = 300

Status = Literal["ok", "fail", "skipped"]
#: A check another part of pgcelery adds, for the probed database: (healthy, detail). Quick,
#: no I/O: it reads state this process keeps.
ExtraCheck = Callable[[Settings], tuple[bool, str]]
_EXTRA_CHECKS: dict[str, ExtraCheck] = {}
#: What :meth:`DatabaseProbe.backlog_stats` reads: tenant backlogs, tasks waiting on a limit.
Backlog = tuple[list[backlog.TenantBacklog], list[backlog.LimitWait]]


def add_check(name: str, check: ExtraCheck) -> None:
    """Run ``check(settings)`` in every health report of this process, under ``name``."""
    _EXTRA_CHECKS[name] = check


def _extra_results(settings: Settings) -> dict[str, CheckResult]:
    results = {}
    for name, check in list(_EXTRA_CHECKS.items()):
        try:
            healthy, detail = check(settings)
        except Exception as exc:  # a broken check is a failing check, never a 500
            healthy, detail = False, f"check failed: {type(exc).__name__}"
        results[name] = CheckResult("ok" if healthy else "fail", scrub(detail)[:_MAX_REASON])
    return results


@dataclass(frozen=True)
class CheckResult:
    status: Status
    detail: str

    def as_json(self) -> dict[str, str]:
        return {"status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class HealthReport:
    checks: dict[str, CheckResult]
    duration: float
    checked_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return all(check.status == "ok" for check in self.checks.values())

    @property
    def failing(self) -> list[str]:
        return [name for name, check in self.checks.items() if check.status == "fail"]

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "ok" if self.ok else "fail",
            "checks": {name: check.as_json() for name, check in self.checks.items()},
        }
        if not self.ok:
            body["failing"] = self.failing
        return body


def _head() -> str:
    return revisions.head()


#: Where libpq's messages name the server and the role: /health is often reachable by more
#: people than the database, so it says that a connection failed, not to what or as whom.
_SERVER = re.compile(r'(server (?:at|on socket)) "[^"]*"(?: \([^)]*\))?')
_NAMED = re.compile(r'\b(user|role|host|database) "[^"]*"')


def anonymous(text: str) -> str:
    """``text`` without the database host, address, socket, user or database name."""
    return _NAMED.sub(r"\1 ***", _SERVER.sub(r"\1 ***", text))


def _reason(exc: BaseException) -> str:
    # psycopg puts the server's message on the first line; the rest is hints and context.
    # (``orig``: the psycopg error inside a SQLAlchemy one, for callers that pass those.)
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    text = first[0] if first else ""
    return anonymous(scrub(f"{type(exc).__name__}: {text}"))[:_MAX_REASON]


class DatabaseProbe:
    """Runs the health checks and the broker statistics on a small pool of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = Names(settings.schema_name)
        self.schema = settings.schema_name
        self.timeout_ms = max(1, round(settings.health_timeout * 1000))
        self.conninfo = dsn.libpq_url(settings.sync_url)
        # Autocommit, so each check's transaction is the explicit one below; behind PgBouncer
        # (poll-only mode) no server-side prepared statements. No server settings: the
        # probe's queries are not the hot path INDEX_PLANS is for.
        kwargs = connections.connect_kwargs(transaction_pooling=not settings.listen)
        kwargs.pop("options", None)
        # libpq counts whole seconds and treats anything below 2 as 2.
        self.connect_kwargs = kwargs | {
            "connect_timeout": max(2, math.ceil(settings.health_timeout))
        }
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.conninfo,
            min_size=0,
            max_size=3,
            timeout=settings.health_timeout,
            # A failed connect is retried in the background until this, not for minutes: the
            # next check asks again, and says why it failed (see _connect_error).
            reconnect_timeout=settings.health_timeout,
            kwargs=self.connect_kwargs,
            check=None,
            open=True,
            name="pgcelery-health",
        )
        self._lock = threading.Lock()
        self.last: HealthReport | None = None

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection inside one transaction bounded by the health timeout."""
        try:
            with self.pool.connection() as connection, connection.transaction():
                connection.execute(
                    "SELECT set_config('statement_timeout', %s, true)", (str(self.timeout_ms),)
                )
                yield connection
        except PoolTimeout as timeout:
            raise self._connect_error() or timeout from None

    def _connect_error(self) -> psycopg.Error | None:
        """Why the pool has no connection to give: libpq's own error if a connection cannot be
        made now (the pool only says it waited), ``None`` if the pool was merely busy."""
        try:
            psycopg.connect(self.conninfo, **self.connect_kwargs).close()
        except psycopg.Error as exc:
            return exc
        return None

    def check(self) -> HealthReport:
        """Run all three checks now; remembered as :attr:`last` for ``/metrics``."""
        started = time.perf_counter()
        results: dict[str, CheckResult] = {}
        try:
            with self._connection() as connection:
                results["database"] = CheckResult("ok", "PostgreSQL answered")
                results["broker"] = self._check_broker(connection)
                results["schema"] = self._check_schema(connection)
        except (psycopg.Error, PoolTimeout) as exc:
            reason = _reason(exc)
            if "database" not in results:
                results["database"] = CheckResult("fail", f"PostgreSQL is unreachable: {reason}")
            else:
                results.setdefault("broker", CheckResult("fail", reason))
                results.setdefault("schema", CheckResult("fail", reason))
        for name in CHECKS:
            results.setdefault(name, CheckResult("skipped", "not checked: database failed"))
        checks = {n: results[n] for n in CHECKS} | _extra_results(self.settings)
        report = HealthReport(checks, time.perf_counter() - started)
        self.last = report
        if not report.ok:
            log.warning(
                "pgcelery.health.failed",
                extra={"failing": report.failing, "checks": report.as_json()["checks"]},
            )
        return report

    def _check_broker(self, connection: psycopg.Connection[Any]) -> CheckResult:
        try:
            with connection.transaction():  # a savepoint: the schema check still runs after
                connection.execute(
                    f"SELECT (SELECT 1 FROM {self.names.queue} LIMIT 1),"
                    f" (SELECT 1 FROM {self.names.message} LIMIT 1)"
                )
        except psycopg.Error as exc:
            # A dropped connection fails every check, as an unreachable database does; a missing
            # table or a statement timeout fails this one.
            if connection.closed or connection.broken:
                raise
            return CheckResult("fail", f"broker tables are not readable: {_reason(exc)}")
        return CheckResult("ok", "broker tables are readable")

    def _check_schema(self, connection: psycopg.Connection[Any]) -> CheckResult:
        recorded = revisions.recorded(
            lambda sql, params: connection.execute(sql, params).fetchall(), self.schema
        )
        found = recorded[0] if recorded else None
        expected = _head()
        if found == expected:
            return CheckResult("ok", f"schema at {expected}")
        if found is None:
            return CheckResult(
                "fail", f"schema not migrated (expected {expected}): run `pgcelery migrate`"
            )
        return CheckResult(
            "fail", f"schema at {found}, code expects {expected}: run `pgcelery migrate`"
        )

    def queue_stats(self) -> list[QueueStats]:
        """Ready, in-flight and oldest-ready age per queue, from the broker tables."""
        excluded = " AND ".join(
            f"q.name NOT LIKE %(skip{i})s" for i in range(len(_INTERNAL_QUEUE_PATTERNS))
        )
        query = (
            "SELECT q.name,"
            " count(m.id) FILTER (WHERE m.visible AND m.visible_at <= now()),"
            " count(m.id) FILTER (WHERE m.lease_token IS NOT NULL AND m.visible_at > now()),"
            " extract(epoch FROM (now() AT TIME ZONE 'UTC')"
            "   - min(m.timestamp) FILTER (WHERE m.visible AND m.visible_at <= now())),"
            f" EXISTS (SELECT 1 FROM {self.names.pause} p WHERE p.queue = q.name)"
            f" FROM {self.names.queue} q LEFT JOIN {self.names.message} m ON m.queue_id = q.id"
            f" WHERE {excluded} GROUP BY q.name ORDER BY q.name"
        )
        params = {f"skip{i}": p for i, p in enumerate(_INTERNAL_QUEUE_PATTERNS)}

        with self._lock, self._connection() as connection:
            rows = connection.execute(query, params).fetchall()
            return [
                QueueStats(
                    name=str(name),
                    ready=int(ready),
                    in_flight=int(in_flight),
                    oldest_ready_age=None if age is None else max(0.0, float(age)),
                    paused=bool(paused),
                )
                for name, ready, in_flight, age, paused in rows
            ]

    def backlog_stats(self) -> Backlog:
        """The biggest tenant backlogs and the tasks held back by a limit, in one transaction."""

        with self._lock, self._connection() as connection:

            def fetch(query: str, params: Any) -> list[tuple[Any, ...]]:
                return connection.execute(query, params).fetchall()

            return backlog.tenant_backlog(fetch, self.names), backlog.limit_waits(fetch, self.names)

    def close(self) -> None:
        self.pool.close()
