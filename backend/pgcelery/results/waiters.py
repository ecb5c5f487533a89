"""Threads waiting for results, woken by the result trigger's NOTIFY.

``AsyncResult.get()`` waits for one task, ``GroupResult.get()`` for many: each waiting thread
registers one event under every task id it still waits for, and the process's listener sets
the events of the task id a NOTIFY names. A NOTIFY is only a wake-up: the waiter then reads the
results it needs in one query, so a lost or coalesced notification costs at most one polling
interval.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from time import monotonic, sleep
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError

from pgcelery.broker import listener
from pgcelery.schema.names import RESULT_CHANNEL

#: Seconds a process keeps listening for results after its last waiter is done.
IDLE_RELEASE = 30.0


class Waiters:
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

    def add(self, task_ids: Iterable[str]) -> threading.Event:
        """One event, set when any of ``task_ids`` is notified (or the listener reconnects)."""
        event = threading.Event()
        with self._lock:
            for task_id in task_ids:
                self._events.setdefault(task_id, []).append(event)
        with self._subscription:
            if not self._subscribed:
                listener.subscribe(self._conninfo, RESULT_CHANNEL, self.notify)
                self._subscribed = True
                threading.Thread(
                    target=self._release_when_idle, name="pgcelery-result-waiters", daemon=True
                ).start()
        return event

    def remove(self, task_ids: Iterable[str], event: threading.Event) -> None:
        with self._lock:
            for task_id in task_ids:
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


_WAITERS: dict[tuple[int, str], Waiters] = {}
_WAITERS_LOCK = threading.Lock()


def waiters(conninfo: str) -> Waiters:
    """This process's waiters on the database ``conninfo`` names."""
    key = (os.getpid(), conninfo)
    with _WAITERS_LOCK:
        found = _WAITERS.get(key)
        if found is None:
            found = _WAITERS[key] = Waiters(conninfo)
        return found


@dataclass(frozen=True)
class Polling:
    """How ``get_many`` waits: Celery's arguments of that name."""

    timeout: float | None
    interval: float | None
    on_message: Any
    on_interval: Any
    max_iterations: int | None


def ready_metas(
    backend: Any,
    waiting: Waiters,
    task_ids: Iterable[str],
    polling: Polling,
    ready_states: frozenset[str],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The result backend's ``get_many``: ``(task_id, meta)`` as each task is ready, reading
    every task still pending in one query (``backend._metas``) per round, and sleeping until a
    NOTIFY names one of them."""
    cache = backend._cache
    pending = list(dict.fromkeys(task_ids))
    for task_id in [tid for tid in pending if tid in cache]:
        yield task_id, cache[task_id]
    pending = [tid for tid in pending if tid not in cache]
    deadline = None if polling.timeout is None else monotonic() + polling.timeout
    rounds = 0
    while pending:
        watched = pending
        event = waiting.add(watched)
        try:
            metas = backend._ensure_retryable(backend._metas, pending)
            for task_id in pending:
                meta = metas[task_id]
                if meta["status"] in ready_states:
                    cache[task_id] = meta  # as Celery's get_many: any ready state
                    if polling.on_message is not None:
                        polling.on_message(meta)
                    yield task_id, meta
            pending = [tid for tid in pending if metas[tid]["status"] not in ready_states]
            rounds += 1
            if not pending or (polling.max_iterations and rounds >= polling.max_iterations):
                return
            if polling.on_interval:
                polling.on_interval()
            wait = 0.5 if polling.interval is None else polling.interval
            if deadline is not None:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    raise CeleryTimeoutError("The operation timed out.")
                wait = min(wait, remaining)
            event.wait(wait)
        finally:
            waiting.remove(watched, event)
