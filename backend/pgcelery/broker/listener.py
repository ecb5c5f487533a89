"""One LISTEN connection per process and database, shared by wake-ups and result waiters.

A daemon thread owns a dedicated autocommit psycopg connection and waits on its socket (and on
a pipe, so a new subscription takes effect at once). Callbacks run on that thread and must be
quick: they set an event. After a reconnect every callback is called with ``None``, meaning
"notifications may have been missed, look again".

The thread must not die: every exception is caught, logged and followed by a reconnect, and a
thread that died anyway is started again by the next subscriber. It waits with ``selectors``,
which has no limit on descriptor numbers (``select`` fails once a process has more than 1,024
open files). A listener whose last subscriber left is closed, so a process stops listening to
a database it no longer uses. Threads do not survive ``fork``: listeners are kept per process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

Callback = Callable[[str | None], None]
#: Seconds an idle LISTEN connection waits before a round trip proves the server is there.
IDLE_PROBE = 5.0


@dataclass(frozen=True)
class ListenerStatus:
    connected: bool
    channels: int
    #: Seconds since the connection was lost (0 while connected).
    down_for: float


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
        self._pipe_open = True
        self._stopped = threading.Event()
        self._down_since: float | None = time.monotonic()
        self._thread: threading.Thread | None = None
        self.ensure_running()

    def ensure_running(self) -> None:
        """Start the thread, or start it again if something killed it."""
        if self._stopped.is_set() or (self._thread is not None and self._thread.is_alive()):
            return
        if self._thread is not None:
            log.error("pgcelery.listen.thread_restarted")
        self._thread = threading.Thread(target=self._run, name="pgcelery-listen", daemon=True)
        self._thread.start()

    def add(self, channel: str, callback: Callback) -> None:
        with self._changed:
            self._callbacks[channel].append(callback)
            if channel not in self._listening:
                self._poke()

    def remove(self, channel: str, callback: Callback) -> bool:
        """Drop one subscription; True when no subscription is left."""
        with self._lock:
            if callback in self._callbacks.get(channel, []):
                self._callbacks[channel].remove(callback)
                if not self._callbacks[channel]:
                    del self._callbacks[channel]
            return not self._callbacks

    def wait_listening(self, channel: str, wait: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: channel in self._listening, timeout=wait)

    def status(self) -> ListenerStatus:
        with self._lock:
            down_since = self._down_since
            channels = len(self._callbacks)
        alive = self._thread is not None and self._thread.is_alive()
        down_for = 0.0 if down_since is None else time.monotonic() - down_since
        return ListenerStatus(alive and down_since is None, channels, down_for)

    def close(self) -> None:
        with self._lock:
            self._stopped.set()
            self._poke()

    def _poke(self) -> None:
        # Under self._lock: the thread closes the pipe under it once stopped, and a closed
        # descriptor's number may already belong to another file.
        if self._pipe_open:
            with contextlib.suppress(OSError):
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
        try:
            while not self._stopped.is_set():
                try:
                    with psycopg.connect(self._conninfo, autocommit=True) as conn:
                        backoff = 0.2
                        with self._lock:
                            self._listening.clear()
                            self._down_since = None
                        if not first:
                            self._dispatch(None, None)
                        first = False
                        self._serve(conn)
                except Exception as exc:  # whatever it was, reconnect: this thread must not die
                    with self._lock:
                        self._listening.clear()
                        if self._down_since is None:
                            self._down_since = time.monotonic()
                    log.warning(
                        "pgcelery.listen.disconnected",
                        extra={"error": type(exc).__name__, "retry_in": backoff},
                    )
                    self._stopped.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            with self._lock:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                if self._stopped.is_set():
                    self._pipe_open = False
                    os.close(self._wake_r)
                    os.close(self._wake_w)

    def _serve(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
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
                ready = selector.select(IDLE_PROBE)
                if any(key.fd == self._wake_r for key, _ in ready):
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                if not ready:
                    # Idle: a cheap round trip notices a dead server without TCP keepalives.
                    conn.execute("SELECT 1")


_LOCK = threading.Lock()
_LISTENERS: dict[tuple[int, str], Listener] = {}


def _running(conninfo: str) -> Listener:
    key = (os.getpid(), conninfo)
    found = _LISTENERS.get(key)
    if found is None:
        found = _LISTENERS[key] = Listener(conninfo)
    found.ensure_running()
    return found


def subscribe(conninfo: str, channel: str, callback: Callback, wait: float = 5.0) -> bool:
    """Call ``callback(payload)`` for each NOTIFY on ``channel`` of the database ``conninfo``.

    Returns once the LISTEN is active (True) or after ``wait`` seconds (False: the database is
    unreachable; callers fall back to polling and are called with ``None`` on reconnect).
    """
    with _LOCK:  # never together with an unsubscribe that closes this listener
        found = _running(conninfo)
        found.add(channel, callback)
    return found.wait_listening(channel, wait)


def unsubscribe(conninfo: str, channel: str, callback: Callback) -> None:
    """Stop calling ``callback``; the last subscriber leaving closes the connection."""
    with _LOCK:
        key = (os.getpid(), conninfo)
        found = _LISTENERS.get(key)
        if found is not None and found.remove(channel, callback):
            del _LISTENERS[key]
            found.close()


def listening(conninfo: str) -> bool:
    """Whether this process already has a listener for ``conninfo`` (and pays for it)."""
    with _LOCK:
        return (os.getpid(), conninfo) in _LISTENERS


def status(conninfo: str) -> ListenerStatus | None:
    """The state of this process's listener for ``conninfo``; None when it has none."""
    with _LOCK:
        found = _LISTENERS.get((os.getpid(), conninfo))
    return None if found is None else found.status()


#: Seconds a LISTEN connection may be down (reconnecting) before health reports it.
DOWN_GRACE = 5.0


def health(conninfo: str) -> tuple[bool, str]:
    """For ``/health``: whether this process's listener for ``conninfo`` is up."""
    found = status(conninfo)
    if found is None:
        return True, "not listening in this process"
    if found.connected:
        return True, f"LISTEN connection up ({found.channels} channels)"
    if found.down_for < DOWN_GRACE:
        return True, f"LISTEN connection reconnecting ({found.down_for:.1f} s)"
    return False, (
        f"LISTEN connection down for {found.down_for:.0f} s: wake-ups fall back to polling"
    )
