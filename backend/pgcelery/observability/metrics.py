"""Every metric pgcelery exports, declared in this one module.

Task counters, the runtime histogram and the task gauges use celery-exporter's names and labels
(``name``, ``hostname``, ``queue_name``), so its Grafana dashboards and alert rules work
unchanged. The ``pgcelery_*`` metrics cover what celery-exporter cannot see on PostgreSQL.

Two kinds of metric live here:

* :class:`TaskMetrics`: counters and gauges that every worker process (each prefork child
  included) updates as tasks run. They are stored in Prometheus multiprocess files, so one scrape
  sums all processes of the worker node.
* ``*_families``: gauges computed at scrape time in the process serving ``/metrics``, from the
  worker's own state and the broker tables.

Every label value is bounded: task names, queue names, worker hostnames, exception class names
and the three health checks. Never task ids; tenant ids only in ``pgcelery_tenant_pending``,
for the :data:`~pgcelery.observability.backlog.TOP_TENANTS` biggest backlogs of a scrape.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from pgcelery.observability.backlog import TOP_TENANTS, LimitWait, TenantBacklog, biggest

TASK_LABELS = ("name", "hostname", "queue_name")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Files are named <kind>_<pid>.db, gauges <kind>_<mode>_<pid>.db.
_PID_FILE = re.compile(r"_(?P<pid>\d+)\.db$")


class TaskMetrics:
    """The metrics worker processes update from Celery's task signals."""

    def __init__(self) -> None:
        # registry=None: in multiprocess mode these are read back from files at scrape time,
        # never from the objects themselves.
        def counter(event: str, help_text: str, extra: Sequence[str] = ()) -> Counter:
            return Counter(f"celery_task_{event}", help_text, (*TASK_LABELS, *extra), registry=None)

        self.sent = counter("sent", "Task messages published by this worker.")
        self.received = counter("received", "Task messages the worker received.")
        self.started = counter("started", "Tasks that started running.")
        self.succeeded = counter("succeeded", "Tasks that returned successfully.")
        self.failed = counter("failed", "Tasks that raised, by exception class.", ("exception",))
        self.rejected = counter("rejected", "Task messages the worker rejected.")
        self.revoked = counter("revoked", "Tasks revoked before or while running.")
        self.retried = counter("retried", "Tasks that asked to be retried.")
        self.runtime = Histogram(
            "celery_task_runtime",
            "Seconds a task ran, from start to finish.",
            TASK_LABELS,
            registry=None,
        )
        self.dead_letters = Counter(
            "pgcelery_dead_letters",
            "Messages moved to the dead letters: delivered too often unacked, or unreadable.",
            ("queue_name", "reason"),
            registry=None,
        )
        self.forged = Counter(
            "pgcelery_forged_messages",
            "Tenant task messages refused: tenant headers without a valid signature.",
            ("name",),
            registry=None,
        )
        self.db_connections_in_use = Gauge(
            "pgcelery_db_pool_connections_in_use",
            "SQLAlchemy pool connections checked out in the worker's processes.",
            ("hostname",),
            registry=None,
            multiprocess_mode="livesum",
        )


_TASK_METRICS: TaskMetrics | None = None


def task_metrics() -> TaskMetrics:
    """The process's task metrics (created on first use, after multiprocess mode is chosen)."""
    global _TASK_METRICS
    if _TASK_METRICS is None:
        _TASK_METRICS = TaskMetrics()
    return _TASK_METRICS


# -- multiprocess mode ------------------------------------------------------------------------


def enable_multiprocess(directory: Path) -> None:
    """Store metric values in ``directory``, shared by this process and its forked children.

    Must run before any :class:`TaskMetrics` exists and before the pool forks. The environment
    variable is for the children and anything that reads it; the value class is switched
    explicitly because prometheus_client chose it when it was first imported.
    """
    global _TASK_METRICS
    directory.mkdir(parents=True, exist_ok=True)
    # Left over from an earlier run, these files would be summed into this run's counters.
    for stale in directory.glob("*.db"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _TASK_METRICS = None


def mark_dead_processes(directory: Path) -> None:
    """Drop the live gauges of processes that exited without saying so (killed children)."""
    pids = {int(m["pid"]) for f in directory.glob("*.db") if (m := _PID_FILE.search(f.name))}
    for pid in pids:
        if not _alive(pid):
            mark_dead(pid, directory)


def mark_dead(pid: int, directory: Path) -> None:
    """Drop the live gauges of ``pid``, which has exited."""
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scrape_registry(directory: Path, collector: Collector) -> CollectorRegistry:
    """A registry for one scrape: every process's files plus the scrape-time gauges."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(collector)
    return registry


# -- scrape-time gauges -----------------------------------------------------------------------


@dataclass(frozen=True)
class QueueStats:
    """One broker queue as the broker tables show it."""

    name: str
    ready: int
    in_flight: int
    oldest_ready_age: float | None
    paused: bool = False


def worker_families(hostname: str, active_tasks: int) -> list[Metric]:
    up = GaugeMetricFamily(
        "celery_worker_up", "1 while the worker process serves metrics.", labels=["hostname"]
    )
    up.add_metric([hostname], 1)
    active = GaugeMetricFamily(
        "celery_worker_tasks_active", "Tasks the worker is running now.", labels=["hostname"]
    )
    active.add_metric([hostname], active_tasks)
    return [up, active]


def queue_families(queues: Iterable[QueueStats]) -> list[Metric]:
    length = GaugeMetricFamily(
        "celery_queue_length",
        "Messages waiting in the queue, ready to be claimed.",
        labels=["queue_name"],
    )
    oldest = GaugeMetricFamily(
        "pgcelery_queue_oldest_message_age_seconds",
        "Age of the oldest message waiting in the queue (0 when it is empty).",
        labels=["queue_name"],
    )
    in_flight = GaugeMetricFamily(
        "pgcelery_messages_in_flight",
        "Messages claimed by a worker under a live lease, not yet acknowledged.",
        labels=["queue_name"],
    )
    paused = GaugeMetricFamily(
        "celery_queue_paused",
        "1 while the queue is paused (pgcelery queue pause): no worker claims from it.",
        labels=["queue"],
    )
    for queue in queues:
        length.add_metric([queue.name], queue.ready)
        oldest.add_metric([queue.name], queue.oldest_ready_age or 0.0)
        in_flight.add_metric([queue.name], queue.in_flight)
        paused.add_metric([queue.name], 1 if queue.paused else 0)
    return [length, oldest, in_flight, paused]


def backlog_families(tenants: Sequence[TenantBacklog], waits: Iterable[LimitWait]) -> list[Metric]:
    # Rebuilt every scrape: a tenant that drops out of the top (or a task no longer held back)
    # simply has no series in the next one.
    pending = GaugeMetricFamily(
        "pgcelery_tenant_pending",
        f"Ready messages of a tenant in a queue, for the {TOP_TENANTS} biggest backlogs"
        " (tenant=global: tasks of no tenant).",
        labels=["queue", "tenant"],
    )
    for backlog in biggest(tenants, TOP_TENANTS):
        pending.add_metric([backlog.queue, backlog.tenant], backlog.pending)
    waiting = GaugeMetricFamily(
        "pgcelery_tasks_waiting_on_limit",
        "Ready messages of a limited task that no worker may start now: their concurrency key"
        " is at its limit or their rate key's next start is still to come.",
        labels=["queue", "task"],
    )
    for wait in waits:
        waiting.add_metric([wait.queue, wait.task], wait.waiting)
    return [pending, waiting]


def health_families(checks: dict[str, bool], duration: float) -> list[Metric]:
    ok = GaugeMetricFamily(
        "pgcelery_health_check_ok",
        "Result of the last health check: 1 passed, 0 failed or not run.",
        labels=["check"],
    )
    for name, passed in checks.items():
        ok.add_metric([name], 1 if passed else 0)
    seconds = GaugeMetricFamily(
        "pgcelery_health_check_duration_seconds", "How long the last health check took."
    )
    seconds.add_metric([], duration)
    return [ok, seconds]
