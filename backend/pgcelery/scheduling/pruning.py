"""Bounded state without beat: the workers prune pgcelery's tables, one worker at a time.

Every table pgcelery writes has a pruning path here that does not depend on beat. A bootstep
starts a daemon thread in each worker's main process (never in prefork children) that runs a
pass every ``PGCELERY_PRUNE_INTERVAL`` seconds (the first after a random part of it, so a fleet
started together does not prune together). A pass deletes, in short transactions (of at most
``PRUNE_BATCH`` rows where a table may hold many):

=================  ==========================================================================
``bindings``       expired rows of ``pgcelery_binding`` and the messages left in their queues
``queues``         rows of ``kombu_queue`` of ephemeral queues (reply, pidbox, ``celeryev``)
                   with no binding and no message (:mod:`pgcelery.broker.queue_rows`)
``broadcasts``     ``pgcelery_broadcast`` rows beyond the transport's row and age limits
``workers``        ``pgcelery_worker`` rows not refreshed for 10 heartbeat intervals
``beat_entries``   ``pgcelery_beat`` rows of entries no longer in ``beat_schedule`` that last
                   ran over ``PGCELERY_BEAT_ENTRY_RETENTION`` seconds ago
``tasks``          ``celery_taskmeta`` rows older than ``result_expires``
``groups``         ``celery_tasksetmeta`` rows older than ``result_expires``
``chords``         ``pgcelery_chord`` rows fired over an hour ago, or unfired and older than
                   ``result_expires`` (30 days if results never expire), with their parts
``dead_letters``   ``pgcelery_dead_letter`` rows buried over ``PGCELERY_DEAD_LETTER_RETENTION``
                   seconds ago
``unique_holds``   ``pgcelery_unique_hold`` rows whose ``unique_for`` period ran out
``limits``         ``pgcelery_limit_state`` rows of limit keys idle for an hour, with no slot
                   taken (:mod:`pgcelery.broker.limit_state`)
=================  ==========================================================================

Each transaction first takes ``pg_try_advisory_xact_lock`` on :func:`prune_lock_key`: while
one worker prunes, the others find the lock taken and skip their turn. A rule that fails (a role
without ``DELETE`` on the table) is logged and skipped; the others still run. A database that
is away fails the pass, which is logged once per outage and tried again an interval later. The
thread never touches a task's connections, so pruning never holds up a task.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

import psycopg
from celery import Celery, bootsteps

from pgcelery import connections, dsn
from pgcelery.broker.bindings import BindingRegistry
from pgcelery.broker.broadcast import prune_broadcasts
from pgcelery.broker.channel import Channel
from pgcelery.broker.dead_letters import purge as purge_dead_letters
from pgcelery.broker.limit_state import prune_limit_state
from pgcelery.broker.queue_rows import ephemeral_patterns, prune_unused
from pgcelery.broker.unique import prune_holds
from pgcelery.observability.heartbeat import DEAD_AFTER_BEATS, prune_dead
from pgcelery.results.retention import (
    PRUNE_BATCH,
    delete_expired,
    delete_old_chords,
    expiry_seconds,
)
from pgcelery.scheduling.beat import prune_removed_entries
from pgcelery.schema.names import Names
from pgcelery.settings import settings_of

log = logging.getLogger(__name__)

#: Seconds a batched rule (``PRUNE_BATCH`` rows per transaction) goes on with full batches in
#: one pass: enough for a thousand results a second at the default interval, while a larger
#: backlog is worked off over several passes instead of in one long one.
RULE_SECONDS = 20.0
#: Seconds a pass waits for a connection before it counts as failed (never beyond the interval).
CONNECT_TIMEOUT = 10.0
#: Guards for each pruning transaction, against a table locked by something else.
_LIMITS = {"statement_timeout": "30s", "lock_timeout": "5s"}

Rule = Callable[[psycopg.Connection[Any]], int | None]


def prune_lock_key(schema: str = "public") -> int:
    """The 64-bit advisory lock key the workers of one pgcelery schema prune under."""
    digest = hashlib.blake2b(f"pgcelery.prune:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class PruneConfig:
    """What a pass deletes, read from the worker's app at the start of each pass."""

    names: Names
    conninfo: str
    result_expires: float
    dead_worker_after: float
    beat_entry_retention: float
    beat_entries: list[str]
    queue_patterns: list[str]
    task_queues: list[str]
    broadcast_max_rows: int
    broadcast_max_age: float
    dead_letter_retention: float
    #: Behind PgBouncer in transaction pooling mode (poll-only): no prepared statements.
    transaction_pooling: bool = False

    @classmethod
    def of(cls, app: Celery) -> PruneConfig:
        settings = settings_of(app)
        conf = app.conf
        options = conf.broker_transport_options or {}
        task_queues = {str(name) for name in app.amqp.queues} | {conf.task_default_queue}
        return cls(
            names=Names(settings.schema_name),
            conninfo=dsn.libpq_url(settings.sync_url),
            result_expires=expiry_seconds(conf.result_expires),
            dead_worker_after=DEAD_AFTER_BEATS * settings.worker_heartbeat_interval,
            beat_entry_retention=settings.beat_entry_retention,
            beat_entries=sorted(conf.beat_schedule or {}),
            queue_patterns=ephemeral_patterns(conf.control_exchange, conf.event_queue_prefix),
            task_queues=sorted(task_queues),
            broadcast_max_rows=int(options.get("broadcast_max_rows", Channel.broadcast_max_rows)),
            broadcast_max_age=float(options.get("broadcast_max_age", Channel.broadcast_max_age)),
            dead_letter_retention=settings.dead_letter_retention,
            transaction_pooling=not settings.listen,
        )

    def rules(self) -> list[tuple[str, Rule, bool]]:
        """(name, one batch, batched?) in the order a pass runs them: bindings before queues,
        so the queues of bindings that just expired go in the same pass."""
        names = self.names
        return [
            ("bindings", lambda c: BindingRegistry(names, 0.0).sweep(c.execute), False),
            (
                "queues",
                lambda c: prune_unused(
                    c, names, self.queue_patterns, self.task_queues, PRUNE_BATCH
                ),
                True,
            ),
            (
                "broadcasts",
                lambda c: prune_broadcasts(
                    c.execute, names, self.broadcast_max_rows, self.broadcast_max_age
                ),
                False,
            ),
            ("workers", lambda c: prune_dead(c, names, self.dead_worker_after), False),
            (
                "beat_entries",
                lambda c: prune_removed_entries(
                    c, names, self.beat_entries, self.beat_entry_retention
                ),
                False,
            ),
            (
                "tasks",
                lambda c: delete_expired(c, names.task, self.result_expires, PRUNE_BATCH),
                True,
            ),
            (
                "groups",
                lambda c: delete_expired(c, names.group, self.result_expires, PRUNE_BATCH),
                True,
            ),
            ("chords", lambda c: delete_old_chords(c, names, self.result_expires), True),
            (
                "dead_letters",
                lambda c: (
                    purge_dead_letters(c, names, older_than=self.dead_letter_retention)
                    if self.dead_letter_retention > 0
                    else 0
                ),
                False,
            ),
            ("unique_holds", lambda c: prune_holds(c, names, PRUNE_BATCH), True),
            ("limits", lambda c: prune_limit_state(c, names, PRUNE_BATCH), True),
        ]


@dataclass
class PruneReport:
    """What one pass deleted per rule, and which rules failed (rule → error class)."""

    counts: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    #: False when another worker held the lock (before or during the pass).
    complete: bool = True

    @property
    def deleted(self) -> int:
        return sum(self.counts.values())


class _LockTaken(Exception):
    """Another process is pruning right now."""


def _batch(conn: psycopg.Connection[Any], key: int, rule: Rule) -> int | None:
    with conn.transaction():
        row = conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s), set_config('statement_timeout', %s, true),"
            " set_config('lock_timeout', %s, true)",
            (key, _LIMITS["statement_timeout"], _LIMITS["lock_timeout"]),
        ).fetchone()
        if not (row and row[0]):
            raise _LockTaken
        return rule(conn)


def prune_once(
    config: PruneConfig,
    on_failure: Callable[[str, Exception], None],
    connect_timeout: float = CONNECT_TIMEOUT,
    stop: threading.Event | None = None,
) -> PruneReport:
    """Run one pass; ``on_failure(rule, error)`` hears of each rule that failed. A set ``stop``
    ends the pass after the batch in progress (the worker is shutting down).

    Raises :class:`psycopg.Error` (or the pool's timeout) when the database cannot be reached.
    """
    report = PruneReport()
    key = prune_lock_key(config.names.schema)
    pool = connections.pool(config.conninfo, transaction_pooling=config.transaction_pooling)
    with pool.connection(timeout=connect_timeout) as conn:
        for name, rule, batched in config.rules():
            if stop is not None and stop.is_set():
                report.complete = False
                return report
            report.counts[name] = 0
            until = monotonic() + RULE_SECONDS
            try:
                while True:
                    deleted = _batch(conn, key, rule)
                    report.counts[name] += deleted or 0
                    full = batched and deleted is not None and deleted >= PRUNE_BATCH
                    if not full or monotonic() > until or (stop is not None and stop.is_set()):
                        break
            except _LockTaken:
                report.complete = False
                return report
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    raise  # the database went away: the whole pass waits for the next interval
                # A timeout, a role without DELETE on this table: the other rules still run.
                report.failed[name] = type(exc).__name__
                on_failure(name, exc)
    return report


class Pruner:
    """The pruning thread of one worker node."""

    def __init__(self, app: Celery, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self.interval = settings_of(app).prune_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._reported: set[tuple[str, str]] = set()

    def run_once(self) -> PruneReport | None:
        """One pass, logged; None when it could not run (the database is away)."""
        started = monotonic()
        try:
            report = prune_once(
                PruneConfig.of(self.app),
                self._rule_failed,
                connect_timeout=max(0.5, min(CONNECT_TIMEOUT, self.interval)),
                stop=self._stop,
            )
        except Exception as exc:
            if not self._failing:
                log.warning(
                    "pgcelery.prune.failed",
                    extra={"hostname": self.hostname, "error": type(exc).__name__},
                    # The database being away needs no traceback; anything else is a bug.
                    exc_info=not isinstance(exc, psycopg.Error),
                )
            self._failing = True
            return None
        if self._failing:
            log.info("pgcelery.prune.recovered", extra={"hostname": self.hostname})
        self._failing = False
        level = logging.INFO if report.deleted or report.failed else logging.DEBUG
        log.log(
            level,
            "pgcelery.prune.ran",
            extra={
                **report.counts,
                "hostname": self.hostname,
                "complete": report.complete,
                "failed": sorted(report.failed),
                "seconds": round(monotonic() - started, 3),
            },
        )
        return report

    def _rule_failed(self, rule: str, exc: Exception) -> None:
        # Once per rule and error: a role without DELETE on a table fails the same way each pass.
        seen = (rule, type(exc).__name__)
        level = logging.DEBUG if seen in self._reported else logging.WARNING
        self._reported.add(seen)
        log.log(
            level,
            "pgcelery.prune.rule_failed",
            extra={"hostname": self.hostname, "rule": rule, "error": type(exc).__name__},
        )

    def _run(self) -> None:
        wait = random.uniform(0, self.interval)
        while not self._stop.wait(wait):
            self.run_once()
            wait = self.interval

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pgcelery-pruner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # A pass in progress ends after its batch in progress; a daemon thread never holds
            # the process up beyond this wait.
            self._thread.join(timeout=5)
            self._thread = None


class PrunerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: prunes from after the pool starts until the worker stops."""

    label = "pgcelery pruner"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.pruner: Pruner | None = None

    def start(self, parent: Any) -> None:
        if settings_of(parent.app).prune_interval <= 0:
            return
        self.pruner = Pruner(parent.app, parent.hostname)
        self.pruner.start()

    def stop(self, parent: Any) -> None:
        if self.pruner is not None:
            self.pruner.stop()
            self.pruner = None

    shutdown = stop
    terminate = stop


def install(app: Celery) -> None:
    """Prune pgcelery's tables from this app's worker nodes (idempotent)."""
    app.steps["worker"].add(PrunerStep)
