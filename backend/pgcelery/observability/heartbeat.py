"""Worker heartbeats: each worker node keeps its row in ``pgcelery_worker`` fresh.

Celery's worker events need a fanout exchange and a listener (Flower); on a Postgres broker the
node writes what an operator wants to see straight into a table instead. A worker bootstep runs
in the node's main process only (never in prefork children), upserts the row every
``PGCELERY_WORKER_HEARTBEAT_INTERVAL`` seconds from a daemon thread, and deletes it on a clean
shutdown. A row whose ``last_seen`` is old belongs to a node that died without saying so; the
workers' pruner deletes it (:func:`prune_dead`, from :mod:`pgcelery.scheduling.pruning`).
A failed beat is logged and retried at the next interval: the database being away must never
stop a worker.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import celery
import psycopg
from celery import Celery, bootsteps

from pgcelery import connections, dsn
from pgcelery.schema.names import Names
from pgcelery.settings import settings_of

log = logging.getLogger(__name__)


#: A row not refreshed for this many heartbeat intervals belongs to a node that died without
#: saying so (SIGKILL, OOM, a lost host). A live node whose row went anyway (paused longer than
#: that) writes it back at its next beat, started_at included.
DEAD_AFTER_BEATS = 10


def prune_dead(conn: psycopg.Connection[Any], names: Names, older_than: float) -> int:
    """Delete the rows of nodes not seen for ``older_than`` seconds; returns how many."""
    cur = conn.execute(
        f"DELETE FROM {names.worker} WHERE last_seen < now() - make_interval(secs => %s)",
        (older_than,),
    )
    return cur.rowcount


def upsert_sql(names: Names) -> str:
    return (
        f"INSERT INTO {names.worker} AS w (hostname, pid, pool, concurrency, queues,"
        " tasks_in_flight, processed, version, started_at, last_seen)"
        " VALUES (%(hostname)s, %(pid)s, %(pool)s, %(concurrency)s, %(queues)s,"
        " %(tasks_in_flight)s, %(processed)s, %(version)s, %(started_at)s, now())"
        " ON CONFLICT (hostname) DO UPDATE SET pid = EXCLUDED.pid, pool = EXCLUDED.pool,"
        " concurrency = EXCLUDED.concurrency, queues = EXCLUDED.queues,"
        " tasks_in_flight = EXCLUDED.tasks_in_flight, processed = EXCLUDED.processed,"
        " version = EXCLUDED.version, started_at = EXCLUDED.started_at, last_seen = now()"
    )


class Heartbeat:
    """The beating thread of one worker node."""

    def __init__(self, worker: Any) -> None:
        settings = settings_of(worker.app)
        self.worker = worker
        self.hostname: str = worker.hostname
        self.interval = settings.worker_heartbeat_interval
        self.names = Names(settings.schema_name)
        self.conninfo = dsn.libpq_url(settings.sync_url)
        self.transaction_pooling = not settings.listen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at: Any = None
        self._failing = False

    def _pool(self) -> Any:
        return connections.pool(self.conninfo, transaction_pooling=self.transaction_pooling)

    def facts(self) -> dict[str, Any]:
        """The row this node writes: identity, pool and what it is doing now."""
        from celery.worker import state

        worker = self.worker
        pool = getattr(worker, "pool_cls", None)
        pool_name = getattr(pool, "__module__", "") or str(pool)
        consumer = getattr(worker, "consumer", None)
        queues = []
        task_consumer = getattr(consumer, "task_consumer", None)
        for queue in getattr(task_consumer, "queues", None) or ():
            queues.append(str(queue.name))
        if not queues:
            queues = sorted(getattr(worker.app.amqp.queues, "consume_from", None) or ())
        return {
            "hostname": self.hostname,
            "pid": os.getpid(),
            "pool": pool_name.rsplit(".", 1)[-1],
            "concurrency": int(getattr(worker, "concurrency", 0) or 0),
            "queues": queues,
            "tasks_in_flight": len(state.active_requests),
            "processed": int(sum(state.total_count.values())),
            "version": celery.__version__,
            "started_at": self._started_at,
        }

    def beat(self) -> bool:
        """Write the row once; ``False`` (logged once per outage) when the database refused."""
        try:
            with connections.pool(
                self.conninfo, transaction_pooling=self.transaction_pooling
            ).connection(timeout=self.interval) as conn:
                if self._started_at is None:
                    found = conn.execute("SELECT now()").fetchone()
                    self._started_at = found[0] if found else None
                conn.execute(upsert_sql(self.names), self.facts())
        except Exception as exc:
            if not self._failing:
                log.warning(
                    "pgcelery.heartbeat.failed: cannot record worker %s in %s (%s); retrying "
                    "every %.0f s",
                    self.hostname,
                    self.names.worker,
                    type(exc).__name__,
                    self.interval,
                    extra={"event": "pgcelery.heartbeat.failed", "hostname": self.hostname},
                )
            self._failing = True
            return False
        if self._failing:
            log.info(
                "pgcelery.heartbeat.recovered",
                extra={"event": "pgcelery.heartbeat.recovered", "hostname": self.hostname},
            )
        self._failing = False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pgcelery-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove the row: a cleanly stopped node is gone, not stale."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
            self._thread = None
        try:
            with connections.pool(
                self.conninfo, transaction_pooling=self.transaction_pooling
            ).connection(timeout=5) as conn:
                conn.execute(
                    f"DELETE FROM {self.names.worker} WHERE hostname = %s AND pid = %s",
                    (self.hostname, os.getpid()),
                )
        except Exception as exc:
            log.warning(
                "pgcelery.heartbeat.remove_failed: worker %s stays listed until it is stale (%s)",
                self.hostname,
                type(exc).__name__,
                extra={"event": "pgcelery.heartbeat.remove_failed", "hostname": self.hostname},
            )


class HeartbeatStep(bootsteps.StartStopStep):
    """Worker bootstep: beats from after the consumer starts until the worker stops."""

    label = "pgcelery heartbeat"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.heartbeat: Heartbeat | None = None

    def start(self, parent: Any) -> None:
        self.heartbeat = Heartbeat(parent)
        self.heartbeat.start()

    def stop(self, parent: Any) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None

    # Warm (stop), cold (terminate) and blueprint shutdown all end the node cleanly.
    shutdown = stop
    terminate = stop


def install(app: Celery) -> None:
    """Record this app's worker nodes in ``pgcelery_worker`` (idempotent)."""
    app.steps["worker"].add(HeartbeatStep)
