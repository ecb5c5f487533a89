"""One LISTEN connection per process, shared by the broker's wake-ups and the result waiters.

A daemon thread owns a dedicated autocommit psycopg connection and waits on its socket (and on
a pipe, so a new subscription takes effect at once). Callbacks run on that thread and must be
quick: they set an event. After a reconnect every callback is called with ``None``, meaning
"notifications may have been missed, look again". Threads do not survive ``fork``, so
listeners are kept per process id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections import defaultdict
from collections.abc import Callable

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

Callback = Callable[[str | None], None]

_LOCK = threading.Lock()
_LISTENERS: dict[tuple[int, str], Listener] = {}


class Listener:
    """A LISTEN connection and the thread that dispatches its notifications."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._callbacks: dict[str, list[Callback]] = defaultdict(list)
        self._listening: set[str] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgcelery-listen", daemon=True)
        self._thread.start()

    def subscribe(self, channel: str, callback: Callback, wait: float = 5.0) -> bool:
        """Call ``callback(payload)`` for each NOTIFY on ``channel``.

        Returns once the LISTEN is active (True) or after ``wait`` seconds (False: the database
        is unreachable; callers fall back to polling and are called with ``None`` on reconnect).
        """
        with self._changed:
            self._callbacks[channel].append(callback)
            if channel in self._listening:
                return True
            os.write(self._wake_w, b"x")
            return self._changed.wait_for(lambda: channel in self._listening, timeout=wait)

    def unsubscribe(self, channel: str, callback: Callback) -> None:
        with self._lock:
            if callback in self._callbacks.get(channel, []):
                self._callbacks[channel].remove(callback)

    def stop(self) -> None:
        self._stopped.set()
        os.write(self._wake_w, b"x")

    def _dispatch(self, channel: str | None, payload: str | None) -> None:
        with self._lock:
            targets = (
                [cb for cbs in self._callbacks.values() for cb in cbs]
                if channel is None
                else list(self._callbacks.get(channel, ()))
            )
        for callback in targets:
            try:
                callback(payload)
            except Exception:
                log.exception("pgcelery.listen.callback_failed")

    def _run(self) -> None:
        backoff = 0.2
        first = True
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    backoff = 0.2
                    with self._lock:
                        self._listening.clear()
                    if not first:
                        self._dispatch(None, None)
                    first = False
                    self._serve(conn)
            except psycopg.Error as exc:
                with self._lock:
                    self._listening.clear()
                log.warning(
                    "pgcelery.listen.disconnected",
                    extra={"error": type(exc).__name__, "retry_in": backoff},
                )
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _serve(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        while not self._stopped.is_set():
            with self._lock:
                missing = [c for c in self._callbacks if c not in self._listening]
            for channel in missing:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            if missing:
                with self._changed:
                    self._listening.update(missing)
                    self._changed.notify_all()
            for note in conn.notifies(timeout=0):
                self._dispatch(note.channel, note.payload)
            ready, _, _ = select.select([conn.fileno(), self._wake_r], [], [], 5.0)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            if not ready:
                # Idle: a cheap round trip notices a dead server without TCP keepalives.
                conn.execute("SELECT 1")


def listener(conninfo: str) -> Listener:
    """The process's listener for ``conninfo`` (a new one after ``fork``)."""
    key = (os.getpid(), conninfo)
    with _LOCK:
        found = _LISTENERS.get(key)
        if found is None:
            found = _LISTENERS[key] = Listener(conninfo)
        return found


def listening(conninfo: str) -> bool:
    """Whether this process already has a listener for ``conninfo`` (and pays for it)."""
    with _LOCK:
        return (os.getpid(), conninfo) in _LISTENERS
