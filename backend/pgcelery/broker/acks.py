"""Acks that ride along with the next claim.

An ack deletes its message row. Sent on its own, that is one round trip per task; but a busy
worker claims its next message a moment after it acks the last one, so the pending deletes are
carried in the claim statement instead (one round trip for both). A worker that does not claim
soon (idle, or its prefetch window is full) has its acks flushed by a timer after ``delay``
seconds. Until its delete is sent, an acked message stays leased and renewed, so no other worker
can take it; a worker killed in that window has the message delivered again, as it would have
had it died a moment before acking.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Flush = Callable[[list[int], list[str]], None]


class PendingAcks:
    def __init__(self, flush: Flush, delay: float = 0.005) -> None:
        self._flush = flush
        self._delay = delay
        self._ids: list[int] = []
        self._tokens: list[str] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def add(self, message_id: int, token: str) -> None:
        with self._cond:
            self._ids.append(message_id)
            self._tokens.append(token)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pgcelery-acks", daemon=True)
                self._thread.start()
            self._cond.notify()

    def take(self) -> tuple[list[int], list[str]]:
        """Everything pending, for the caller to delete (``put_back`` if that fails)."""
        with self._cond:
            ids, tokens = self._ids, self._tokens
            self._ids, self._tokens = [], []
        return ids, tokens

    def put_back(self, ids: list[int], tokens: list[str]) -> None:
        if not ids:
            return
        with self._cond:
            self._ids[:0] = ids
            self._tokens[:0] = tokens
            # The flusher may be parked waiting for acks: a failed claim or close that took
            # these must not leave them unsent (their leases would be renewed for ever).
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pgcelery-acks", daemon=True)
                self._thread.start()
            self._cond.notify()

    def flush_now(self) -> None:
        ids, tokens = self.take()
        if not ids:
            return
        try:
            self._flush(ids, tokens)
        except Exception:
            self.put_back(ids, tokens)
            raise

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._ids or self._stopped)
                if self._stopped:
                    return
            # Give the consuming thread's next claim the chance to carry these.
            with self._cond:
                self._cond.wait(self._delay)
                if self._stopped:
                    return
            try:
                self.flush_now()
            except Exception as exc:
                log.warning("pgcelery.broker.ack_flush_failed", extra={"error": type(exc).__name__})
                with self._cond:
                    self._cond.wait(0.5)
