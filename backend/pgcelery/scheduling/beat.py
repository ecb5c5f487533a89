"""A celery beat scheduler kept in PostgreSQL: run several beat processes, each run fires once.

``celery -A <app> beat -S pgcelery.beat:PgScheduler`` (the default ``beat_scheduler`` of
``create_app``). Every beat process holds one database session:

* **Leader election.** The session that holds a session-level advisory lock
  (:func:`leader_lock_key`) is the leader and the only one that sends tasks; the others retry
  every ``PGCELERY_BEAT_STANDBY_INTERVAL`` seconds. A leader that dies loses its session and
  with it the lock, so a standby takes over without anyone's intervention.
* **One leader at a time.** Leadership belongs to the session, not to the process
  (:mod:`pgcelery.scheduling.leader`): a leader steps down, ending its session, on any error of
  the database or of a send; a leader that stalls has its session ended by the server within
  ``PGCELERY_BEAT_LEASE`` seconds; and each run is sent only after checking, in its own
  transaction, that the session still holds the lock.
* **Exactly once.** When each entry last fired is in ``pgcelery_beat``. A run is sent in the
  same transaction that moves ``last_run_at`` forward, and only if ``last_run_at`` still holds
  the value the decision was based on. A leader killed before its commit sent nothing and
  moved nothing; one killed after it has moved the clock the next leader reads. Even two
  senders (say, a beat of an older release during a rolling deploy) could not both win the
  same update.

Each run's task id is derived from the entry and the ``last_run_at`` it replaced, so it is the
same id whichever process sends it. As with any Celery beat, runs missed while no beat process
was up (or during a failover) collapse into one run when scheduling resumes.
"""

from __future__ import annotations

import copy
import logging
import os
import uuid
from datetime import datetime
from typing import Any

import psycopg
from celery.beat import ScheduleEntry, Scheduler, SchedulingError
from kombu.exceptions import OperationalError as KombuOperationalError

from pgcelery import dsn
from pgcelery.broker.transport import enqueue_using
from pgcelery.scheduling.leader import LeaderSession, LeadershipLost, leader_lock_key
from pgcelery.schema.names import Names
from pgcelery.settings import settings_of

__all__ = ["PgScheduler", "leader_lock_key", "run_id"]

log = logging.getLogger(__name__)

_RUN_ID_NAMESPACE = uuid.UUID("c4bed172-15d3-4460-96f1-cd18ed936849")
#: Errors that say the database session, and so perhaps the leader lock, may be gone.
_SESSION_ERRORS = (psycopg.Error, KombuOperationalError, OSError, LeadershipLost)


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
        self._session = LeaderSession(
            self._settings.database_url, self._settings.schema_name, self._settings.beat_lease
        )
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
            # The leader's next statement is its proof of life: it must come before the lease
            # runs out, however far away the next run is.
            return min(self._send_due(), self._session.heartbeat)
        except Exception as exc:  # whatever it was, a leader unsure of its session must not send
            self._step_down(exc)
            return standby

    def close(self) -> None:
        super().close()
        if self._session.close():  # ending the session releases the lock at once
            log.info("pgcelery.beat.leader_released", extra={"pid": os.getpid()})

    @property
    def info(self) -> str:
        return (
            f"    . state -> {self._names.beat} in {dsn.redact(self._settings.database_url)}\n"
            f"    . leader lock -> advisory {self._session.key},"
            f" lease {self._settings.beat_lease:g} s"
        )

    @property
    def is_leader(self) -> bool:
        return self._session.leading

    # -- leadership --------------------------------------------------------------------------

    def _lead(self) -> bool:
        if self._session.leading:
            return True
        if not self._session.try_lead():
            return False
        self._register_entries(self._session.connection)
        log.info(
            "pgcelery.beat.leader_elected",
            extra={
                "pid": os.getpid(),
                "entries": sorted(self.schedule),
                "lease": self._settings.beat_lease,
            },
        )
        return True

    def _step_down(self, exc: BaseException) -> None:
        """Forget leadership and end the session; the next tick contends again from scratch."""
        was_leader = self._session.close()
        log.warning(
            "pgcelery.beat.stepped_down" if was_leader else "pgcelery.beat.connection_lost",
            extra={"pid": os.getpid(), "was_leader": was_leader, "error": type(exc).__name__},
            # Database errors are routine here; anything else is a bug worth its traceback.
            exc_info=None if _from_session(exc) else exc,
        )

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
        db = self._session.connection
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
        """Send one run of ``entry`` and move its clock, in one transaction; False if not sent.

        Raises when the session may have lost the lock, so that :meth:`tick` steps down.
        """
        previous: datetime = entry.last_run_at
        task_id = run_id(entry.name, previous)
        run = copy.copy(entry)
        # retry=False: a failed INSERT aborts the transaction, so a retry inside it cannot work;
        # the entry stays due and the next tick tries again.
        run.options = {**entry.options, "task_id": task_id, "retry": False}
        try:
            with db.transaction():
                self._session.fence()
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
            # apply_async wraps every error; one from the session (a terminated backend, a cut
            # connection) means the lock may be gone, and only stepping down is safe.
            if self._session.broken or _from_session(exc):
                raise
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


def _from_session(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from or during, came from the session."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _SESSION_ERRORS):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
