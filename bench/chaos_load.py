"""The load and the gauges of a ``make chaos`` scenario: a fixed-rate producer, a sampler.

The producer keeps a timetable (task ``i`` is due at ``start + i / rate``), so a publish that
blocks during a fault does not lower the offered load: the tasks it fell behind on are sent as
soon as it can, as an upstream that keeps receiving requests would. Every task id whose
``send_task`` returned is *produced*; one whose ``send_task`` raised is a *failed publish*,
which the caller was told did not happen and which the harness does not retry.

The sampler reads table sizes, dead tuples and the backlog every couple of seconds through its
own connection, and keeps the fleet supervised in between.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from bench.chaos_server import connect
from bench.chaos_tasks import TASK_NAME
from bench.chaos_workers import Fleet
from pgcelery import create_app
from pgcelery.settings import Settings

WATCHED_TABLES = (
    "kombu_message",
    "celery_taskmeta",
    "pgcelery_broadcast",
    "kombu_queue",
    "pgcelery_worker",
)
#: Sends per second one producer thread is given at most (a publish costs about a millisecond).
RATE_PER_THREAD = 150.0


@dataclass(frozen=True)
class Sent:
    task_id: str
    due: float  # when the timetable wanted it sent (wall clock)
    at: float  # when send_task returned or raised


class Producer:
    """Threads that publish ``chaos.record`` at ``rate`` tasks/s (changeable while running)."""

    def __init__(self, url: str, rate: float, task_sleep: float, max_rate: float) -> None:
        settings = Settings(DATABASE_URL=url, PGCELERY_METRICS_ENABLED=False)
        self.app = create_app("chaos-producer", settings=settings)
        self.rate = rate
        self.task_sleep = task_sleep
        self.threads = max(1, int(-(-max_rate // RATE_PER_THREAD)))
        self.sent: list[Sent] = []
        self.failed: list[Sent] = []
        self.errors: dict[str, int] = {}
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._wall_offset = time.time() - time.monotonic()

    def start(self) -> None:
        for k in range(self.threads):
            thread = threading.Thread(target=self._run, args=(k,), name=f"producer-{k}")
            thread.start()
            self._workers.append(thread)

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        for thread in self._workers:
            thread.join(60)
        self.app.close()

    def _run(self, k: int) -> None:
        due = time.monotonic() + k / self.rate
        while not self._stop.is_set():
            wait = due - time.monotonic()
            if wait > 0:
                self._stop.wait(wait)
                continue
            self._send_one(due + self._wall_offset)
            due += self.threads / self.rate

    def _send_one(self, due: float) -> None:
        task_id = str(uuid.uuid4())
        seq = next(self._seq)
        try:
            self.app.send_task(TASK_NAME, args=(seq, self.task_sleep), task_id=task_id)
        except Exception as exc:  # counted and reported: the fault reached the caller
            self.failed.append(Sent(task_id, due, time.time()))
            kind = type(exc).__name__
            self.errors[kind] = self.errors.get(kind, 0) + 1
            return
        self.sent.append(Sent(task_id, due, time.time()))


@dataclass
class TableStats:
    peak_bytes: int = 0
    peak_dead: int = 0
    last_bytes: int = 0
    last_dead: int = 0


@dataclass
class Sampler:
    """Samples table sizes, dead tuples and backlog; supervises the fleet between samples."""

    url: str
    fleet: Fleet
    interval: float = 2.0
    tables: dict[str, TableStats] = field(
        default_factory=lambda: {name: TableStats() for name in WATCHED_TABLES}
    )
    peak_backlog: int = 0
    failed_samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _conn: psycopg.Connection[Any] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sampler")
        self._thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.sample()  # the figures at the end of the scenario
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        next_sample = 0.0
        while not self._stop.wait(0.5):
            self.fleet.watch()
            if time.monotonic() >= next_sample:
                self.sample()
                next_sample = time.monotonic() + self.interval

    def sample(self) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.url, timeout=2)
            rows = self._conn.execute(
                "SELECT c.relname, pg_total_relation_size(c.oid), coalesce(s.n_dead_tup, 0)"
                " FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
                " WHERE c.relkind = 'r' AND c.relname = ANY(%s)",
                (list(WATCHED_TABLES),),
            ).fetchall()
            backlog = self._conn.execute("SELECT count(*) FROM kombu_message").fetchone()
        except psycopg.Error:
            # The server is down or full: this is what the scenario does to everyone.
            self.failed_samples += 1
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return
        for name, size, dead in rows:
            stats = self.tables[name]
            stats.last_bytes, stats.last_dead = int(size), int(dead)
            stats.peak_bytes = max(stats.peak_bytes, stats.last_bytes)
            stats.peak_dead = max(stats.peak_dead, stats.last_dead)
        if backlog is not None:
            self.peak_backlog = max(self.peak_backlog, int(backlog[0]))
