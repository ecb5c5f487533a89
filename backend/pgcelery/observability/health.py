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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pgcelery.observability import backlog
from pgcelery.observability.metrics import QueueStats
from pgcelery.observability.redaction import scrub
from pgcelery.schema import revisions
from pgcelery.schema.names import Names
from pgcelery.settings import Settings

if TYPE_CHECKING:
    import sqlalchemy as sa

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
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    text = first[0] if first else ""
    return anonymous(scrub(f"{type(exc).__name__}: {text}"))[:_MAX_REASON]


class DatabaseProbe:
    """Runs the health checks and the broker statistics on a small pool of its own."""

    def __init__(self, settings: Settings) -> None:
        # SQLAlchemy only here: a worker without the HTTP server never loads it.
        import sqlalchemy as sa

        self.settings = settings
        self.names = Names(settings.schema_name)
        self.schema = settings.schema_name
        self.timeout_ms = max(1, round(settings.health_timeout * 1000))
        self.engine = sa.create_engine(
            settings.sync_url,
            pool_size=1,
            max_overflow=2,
            pool_timeout=settings.health_timeout,
            # libpq counts whole seconds and treats anything below 2 as 2.
            connect_args={
                "connect_timeout": max(2, math.ceil(settings.health_timeout)),
                # Behind PgBouncer in transaction pooling mode: no server-side prepared statements.
                **({} if settings.listen else {"prepare_threshold": None}),
            },
        )
        self._lock = threading.Lock()
        self.last: HealthReport | None = None

    def _transaction(self, body: Callable[[sa.Connection], Any]) -> Any:
        import sqlalchemy as sa

        with self.engine.connect() as connection, connection.begin():
            connection.execute(
                sa.text("SELECT set_config('statement_timeout', :ms, true)"),
                {"ms": str(self.timeout_ms)},
            )
            return body(connection)

    def check(self) -> HealthReport:
        """Run all three checks now; remembered as :attr:`last` for ``/metrics``."""
        import sqlalchemy as sa

        started = time.perf_counter()
        results: dict[str, CheckResult] = {}
        try:
            with self.engine.connect() as connection, connection.begin():
                connection.execute(
                    sa.text("SELECT set_config('statement_timeout', :ms, true)"),
                    {"ms": str(self.timeout_ms)},
                )
                results["database"] = CheckResult("ok", "PostgreSQL answered")
                results["broker"] = self._check_broker(connection)
                results["schema"] = self._check_schema(connection)
        except sa.exc.SQLAlchemyError as exc:
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

    def _check_broker(self, connection: sa.Connection) -> CheckResult:
        import sqlalchemy as sa

        try:
            with connection.begin_nested():
                connection.execute(
                    sa.text(
                        f"SELECT (SELECT 1 FROM {self.names.queue} LIMIT 1),"
                        f" (SELECT 1 FROM {self.names.message} LIMIT 1)"
                    )
                )
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            return CheckResult("fail", f"broker tables are not readable: {_reason(exc)}")
        return CheckResult("ok", "broker tables are readable")

    def _check_schema(self, connection: sa.Connection) -> CheckResult:
        recorded = revisions.recorded(
            lambda sql, params: connection.exec_driver_sql(sql, params).fetchall(), self.schema
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
        import sqlalchemy as sa

        excluded = " AND ".join(
            f"q.name NOT LIKE :skip{i}" for i in range(len(_INTERNAL_QUEUE_PATTERNS))
        )
        query = sa.text(
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

        def run(connection: sa.Connection) -> list[QueueStats]:
            rows = connection.execute(query, params).all()
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

        with self._lock:
            result: list[QueueStats] = self._transaction(run)
        return result

    def backlog_stats(self) -> Backlog:
        """The biggest tenant backlogs and the tasks held back by a limit, in one transaction."""

        def run(connection: sa.Connection) -> Backlog:
            def fetch(query: str, params: Any) -> list[sa.Row[Any]]:
                # %(name)s parameters, passed to psycopg as they are (see observability.backlog).
                return list(connection.exec_driver_sql(query, params).all())

            return backlog.tenant_backlog(fetch, self.names), backlog.limit_waits(fetch, self.names)

        with self._lock:
            result: Backlog = self._transaction(run)
        return result

    def close(self) -> None:
        self.engine.dispose()
