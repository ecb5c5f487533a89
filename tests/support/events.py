"""A real Celery ``EventReceiver`` (what ``celery events``, Flower and celery-exporter use)."""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery


class Collector:
    """An EventReceiver on its own connection and thread, recording every event."""

    def __init__(self, app: Celery) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._connection = app.connection_for_read()
        self.receiver = app.events.Receiver(self._connection, handlers={"*": self._record})
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _record(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def _run(self) -> None:
        self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, kind: str, uuid: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e for e in self.events if e["type"] == kind and (uuid is None or e["uuid"] == uuid)
            ]

    def stop(self) -> None:
        self.receiver.should_stop = True
        self._thread.join(30)
        self._connection.release()
