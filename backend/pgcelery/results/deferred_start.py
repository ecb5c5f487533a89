"""STARTED states stored only for tasks that run long enough for anyone to see them.

With ``task_track_started`` Celery stores a task's STARTED state as it begins and its result
as it ends: for a short task that is two writes of the same row (with every index of
``celery_taskmeta`` updated twice) where one would do, and the first is outdated a few
milliseconds later. :class:`DeferredStarts` holds each STARTED write back for
``PGCELERY_STARTED_STATE_DELAY`` seconds and drops it if the task has stored any other state
by then; a longer task gets its STARTED state as usual, that much later. Only the writes a
task makes for itself are held back (Celery's tracer and ``update_state`` pass the task's
request), and a process that reads a task's state first writes what it holds back for it.

One lock orders the two writers: the timer thread writes due STARTED states while holding it,
and a task's next state is stored only after taking it, so a late STARTED can never land over
a result.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from time import monotonic

log = logging.getLogger(__name__)

Write = Callable[[], object]


class DeferredStarts:
    """The STARTED writes of one process, waiting for their delay to pass."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._lock = threading.Lock()
        self._due: dict[str, tuple[float, Write]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def defer(self, task_id: str, write: Write) -> None:
        """Run ``write`` after the delay unless :meth:`settle` is called for ``task_id`` first."""
        with self._lock:
            idle = not self._due
            self._due[task_id] = (monotonic() + self.delay, write)
        self._ensure_thread()
        # Every write has the same delay: one that waits already is due first, and the timer
        # sleeps until then. Only an empty timer (sleeping without end) needs waking, not one
        # thread wake-up per task.
        if idle:
            self._wake.set()

    def settle(self, task_id: str) -> None:
        """``task_id`` is about to store another state: its STARTED write is no longer wanted,
        and one already under way finishes first."""
        with self._lock:
            self._due.pop(task_id, None)

    def flush(self, task_id: str) -> None:
        """Write ``task_id``'s STARTED state now if it is waiting: this process is about to
        read that task's state and must see its own writes."""
        with self._lock:
            entry = self._due.pop(task_id, None)
            if entry is not None:
                entry[1]()

    def pending(self) -> int:
        with self._lock:
            return len(self._due)

    def _ensure_thread(self) -> None:
        # A forked pool child inherits the object but not the thread: start its own.
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="pgcelery-started-states", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                now = monotonic()
                ready = [tid for tid, (at, _) in self._due.items() if at <= now]
                for task_id in ready:
                    _, write = self._due.pop(task_id)
                    try:
                        write()
                    except Exception as exc:  # the result, stored later, is what matters
                        log.warning(
                            "pgcelery.started_state.failed",
                            extra={"task_id": task_id, "error": type(exc).__name__},
                        )
                upcoming = min((at for at, _ in self._due.values()), default=None)
            self._wake.wait(None if upcoming is None else max(0.0, upcoming - monotonic()))
