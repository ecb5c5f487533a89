"""A celery beat scheduler kept in PostgreSQL: run several beat processes, each run fires once.

``celery -A <app> beat -S pgcelery.beat:PgScheduler`` (the default ``beat_scheduler`` of
``create_app``). Every beat process holds one database session:

* **Leader election.** The session that holds a session-level advisory lock
  (:func:`leader_lock_key`) is the leader and the only one that sends tasks; the others retry
  every ``PGCELERY_BEAT_STANDBY_INTERVAL`` seconds. A leader that dies loses its session and
  with it the lock, so a standby takes over without anyone's intervention.
* **Exactly once.** When each entry last fired is in ``pgcelery_beat``. A run is sent in the
  same transaction that moves ``last_run_at`` forward, and only if ``last_run_at`` still holds
  the value the decision was based on. A leader killed before its commit sent nothing and
  moved nothing; one killed after it has moved the clock the next leader reads. Two processes
  that both believe they lead (a partitioned leader whose session the server has not yet
  dropped) cannot both win the same update.

Each run's task id is derived from the entry and the ``last_run_at`` it replaced, so it is the
same id whichever process sends it. As with any Celery beat, runs missed while no beat process
was up (or during a failover) collapse into one run when scheduling resumes.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import socket
import uuid
from datetime import datetime
from typing import Any

import psycopg
from celery.beat import ScheduleEntry, Scheduler, SchedulingError

from pgcelery import dsn
from pgcelery.broker.transport import enqueue_using
from pgcelery.schema.tables import Names
from pgcelery.settings import settings_of

log = logging.getLogger(__name__)

_RUN_ID_NAMESPACE = uuid.UUID("c4bed172-15d3-4460-96f1-cd18ed936849")
#: Seconds before the server probes (and then drops) a leader's silent TCP connection, so a
#: leader whose host vanished without closing its socket releases the lock within about a
#: minute rather than after the operating system's default of two hours.
_SERVER_KEEPALIVE = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10}


def leader_lock_key(schema: str = "public") -> int:
    """The 64-bit advisory lock key beat processes of one pgcelery schema compete for."""
    # The text is the scheduler's original module path. It is hashed, not imported: changing it
    # would let beat processes of two releases both lead during a rolling deploy.
    digest = hashlib.blake2b(f"pgcelery.beat:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def prune_removed_entries(
    conn: psycopg.Connection[Any], names: Names, scheduled: list[str], older_than: float
) -> int:
    """Delete the rows of entries not in ``scheduled`` that last ran over ``older_than`` s ago.

    Run by the workers' pruner with the ``beat_schedule`` of the workers' app: an entry removed
    from the schedule keeps its row otherwise, as nothing else ever deletes one. An entry that is
    still scheduled never loses its row however rarely it runs. ``older_than`` (30 days by
    default) also protects an entry that beat schedules and the workers' app does not know:
    deleting its row would restart its interval from now.
    """
    cur = conn.execute(
        f"DELETE FROM {names.beat} WHERE name <> ALL(%s)"
        " AND last_run_at < now() - make_interval(secs => %s)",
        (scheduled, older_than),
    )
    return cur.rowcount


def run_id(entry_name: str, previous_run_at: datetime) -> str:
    """The task id of the run of ``entry_name`` that follows the one at ``previous_run_at``."""
    return str(uuid.uuid5(_RUN_ID_NAMESPACE, f"{entry_name}|{previous_run_at.isoformat()}"))


class PgScheduler(Scheduler):  # type: ignore[misc]
    """Celery beat scheduler with leader election and run state in PostgreSQL."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self._settings = settings_of(app)
        self._names = Names(self._settings.schema_name)
        self._db: psycopg.Connection[Any] | None = None
        self._leader = False
        super().__init__(app, *args, **kwargs)

    # -- Scheduler interface -----------------------------------------------------------------

    def install_default_entries(self, data: Any) -> None:
        """Skip Celery's daily ``celery.backend_cleanup``: ``maintenance.prune_results`` (in
        the default ``beat_schedule``) prunes the same rows in short batches."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Lead or stand by; as leader, send what is due. Returns seconds until the next tick."""
        standby = self._settings.beat_standby_interval
        try:
            if not self._lead():
                return standby
            return self._send_due()
        except psycopg.OperationalError as exc:
            self._step_down(exc)
            return standby

    def close(self) -> None:
        super().close()
        if self._leader:
            log.info("pgcelery.beat.leader_released", extra={"pid": os.getpid()})
        self._leader = False
        if self._db is not None:
            self._db.close()  # ends the session, which releases the lock at once
            self._db = None

    @property
    def info(self) -> str:
        return (
            f"    . state -> {self._names.beat} in {dsn.redact(self._settings.database_url)}\n"
            f"    . leader lock -> advisory {leader_lock_key(self._settings.schema_name)}"
        )

    @property
    def is_leader(self) -> bool:
        return self._leader

    # -- leadership --------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        db = self._db
        if db is None or db.closed:
            db = self._db = psycopg.connect(
                dsn.libpq_url(self._settings.database_url),
                autocommit=True,
                application_name=f"pgcelery-beat:{socket.gethostname()}:{os.getpid()}",
            )
            for name, seconds in _SERVER_KEEPALIVE.items():
                db.execute(f"SET {name} = {int(seconds)}")
        return db

    def _lead(self) -> bool:
        db = self._connect()
        if self._leader:
            return True
        key = leader_lock_key(self._settings.schema_name)
        row = db.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not (row and row[0]):
            return False
        self._leader = True
        self._register_entries(db)
        log.info(
            "pgcelery.beat.leader_elected",
            extra={"pid": os.getpid(), "entries": sorted(self.schedule)},
        )
        return True

    def _step_down(self, exc: BaseException) -> None:
        log.warning(
            "pgcelery.beat.connection_lost",
            extra={"pid": os.getpid(), "was_leader": self._leader, "error": type(exc).__name__},
        )
        self._leader = False
        if self._db is not None:
            self._db.close()
            self._db = None

    def _register_entries(self, db: psycopg.Connection[Any]) -> None:
        """Give every entry a row; an entry seen for the first time counts from now."""
        entries: dict[str, ScheduleEntry] = self.schedule
        for name, entry in entries.items():
            db.execute(
                f"INSERT INTO {self._names.beat} (name, task, last_run_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (name, entry.task, self.app.now()),
            )

    # -- sending -----------------------------------------------------------------------------

    def _send_due(self) -> float:
        db = self._connect()
        entries: dict[str, ScheduleEntry] = self.schedule
        rows = db.execute(
            f"SELECT name, last_run_at, total_run_count FROM {self._names.beat}"
            " WHERE name = ANY(%s)",
            (list(entries),),
        ).fetchall()
        state = {name: (last_run_at, count) for name, last_run_at, count in rows}
        delay = float(self.max_interval)
        for name, entry in entries.items():
            if name not in state:  # added to the schedule while this process leads
                self._register_entries(db)
                return 0.0
            entry.last_run_at, entry.total_run_count = state[name]
            due, next_in = entry.is_due()
            if due and not self._send(db, entry):
                next_in = min(next_in, self._settings.beat_standby_interval)
            delay = min(delay, float(next_in))
        return max(delay, 0.0)

    def _send(self, db: psycopg.Connection[Any], entry: ScheduleEntry) -> bool:
        """Send one run of ``entry`` and move its clock, in one transaction; False if not sent."""
        previous: datetime = entry.last_run_at
        task_id = run_id(entry.name, previous)
        run = copy.copy(entry)
        # retry=False: a failed INSERT aborts the transaction, so a retry inside it cannot work;
        # the entry stays due and the next tick tries again.
        run.options = {**entry.options, "task_id": task_id, "retry": False}
        try:
            with db.transaction():
                moved = db.execute(
                    f"UPDATE {self._names.beat} SET last_run_at = %s, task = %s,"
                    " total_run_count = total_run_count + 1, last_task_id = %s"
                    " WHERE name = %s AND last_run_at = %s",
                    (self.app.now(), entry.task, task_id, entry.name, previous),
                ).rowcount
                if moved != 1:
                    log.warning(
                        "pgcelery.beat.run_taken",
                        extra={"entry": entry.name, "task_id": task_id},
                    )
                    return True
                with enqueue_using(db):
                    self.apply_async(run, producer=self.producer, advance=False)
        except SchedulingError as exc:
            log.error(
                "pgcelery.beat.send_failed",
                extra={"entry": entry.name, "task_id": task_id, "error": str(exc)},
            )
            return False
        log.info(
            "pgcelery.beat.sent",
            extra={"entry": entry.name, "task": entry.task, "task_id": task_id},
        )
        return True
