"""Worker events at the cost of a batch, and at no cost when nobody listens.

Celery's worker publishes every task event (received, started, succeeded, ...) as its own
message: on pgcelery that would be one row of the broadcast log, one commit and one NOTIFY per
event, three or more per task, paid by the task loop. Celery already knows a cheaper form:
a list of events published as one ``task.multi`` message, which every ``EventReceiver``
(``celery events``, Flower, celery-exporter) unpacks event by event. Celery uses it only when
the worker runs an event loop (``hub``), which a virtual transport never does.

:class:`BatchingEventDispatcher` uses it always, for a dispatcher that owns its connection (the
worker's): task events are buffered and published together at most ``FLUSH_INTERVAL`` seconds
after the first of them, or when ``BATCH_LIMIT`` are waiting, or when the dispatcher closes.
Other events (worker heartbeats, online/offline) and dispatchers on a borrowed channel (the
``task-sent`` events of a producer) publish at once, as in Celery.

And when no consumer is bound to the event exchange, task events are dropped before they are
built, as a broker would drop them on the floor anyway: a worker started with ``-E`` costs
nothing until Flower or ``celery events`` starts (within about a second of the consumer's
binding, see :mod:`pgcelery.broker.bindings`).
"""

from __future__ import annotations

import threading
from time import monotonic, time
from typing import Any

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from celery.events.event import Event
from celery.utils.time import utcoffset

#: Buffered task events wait at most this long (seconds) before they are published. Receivers
#: read the log on a timer of the same order (pgcelery.broker.broadcast), so a shorter wait would
#: only cost more rows, commits and NOTIFYs (each NOTIFY wakes every listening backend).
FLUSH_INTERVAL = 0.1
#: ... or until this many are waiting.
BATCH_LIMIT = 1000
#: The routing key of a batch, as Celery's own event loop publishes it.
BATCH_ROUTING_KEY = "task.multi"
_CELERY_EVENT = Event
#: How long an answer to "does anyone consume this event?" is trusted (seconds). The shared
#: bindings it reads are themselves cached for a second (:mod:`pgcelery.broker.bindings`).
HEARD_CACHE_SECONDS = 0.25


class BatchingEventDispatcher(EventDispatcher):
    """Celery's ``EventDispatcher`` that batches task events and skips them when unheard."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._armed = threading.Event()
        self._stopped = threading.Event()
        self._flusher: threading.Thread | None = None
        self._heard_at: dict[str, tuple[float, bool]] = {}
        owns_channel = self.channel is None and self.connection is not None
        if self.enabled and owns_channel and not self.buffer_group:  # type: ignore[has-type]
            self.buffer_group = frozenset({"task"})
            self.buffer_limit = BATCH_LIMIT
            self.on_send_buffered = self._wake_flusher
            self._flusher = threading.Thread(
                target=self._flush_loop, name="pgcelery-events", daemon=True
            )
            self._flusher.start()

    def send(
        self,
        type: str,
        blind: bool = False,
        utcoffset: Any = utcoffset,
        retry: bool = False,
        retry_policy: Any = None,
        Event: Any = Event,
        **fields: Any,
    ) -> Any:
        # Never retry while holding the dispatcher's lock: Celery's heartbeat thread sends
        # worker-heartbeat with retry=True, and with broker_connection_max_retries=None kombu
        # retries forever during an outage, so the consumer's restart, which sends
        # worker-offline under the same lock, would wait with it and never reconnect. A failed
        # publish goes to Celery's offline buffer instead, sent again after the reconnect.
        retry = False
        if self.enabled and type.startswith("task-") and (not self.groups or "task" in self.groups):
            routing_key = type.replace("-", ".")
            if not self._heard(routing_key):
                return None
            if "task" in self.buffer_group:
                if self._heard(BATCH_ROUTING_KEY):
                    if Event is _CELERY_EVENT:
                        self._buffer(type, utcoffset, fields)
                        return None
                else:
                    # A consumer bound to this one event type only: a batch would not reach it.
                    event = self._prepare_event(type, fields, blind=blind, Event=Event)
                    with self.mutex:
                        if self._closed:
                            return None
                        return self._publish(
                            event,
                            self.producer,
                            routing_key,
                            retry=retry,
                            retry_policy=retry_policy,
                        )
        return super().send(
            type,
            blind=blind,
            utcoffset=utcoffset,
            retry=retry,
            retry_policy=retry_policy,
            Event=Event,
            **fields,
        )

    def _buffer(self, type: str, utcoffset: Any, fields: dict[str, Any]) -> None:
        """Celery's buffered send, the same event in one pass: three of these run per task."""
        fields["hostname"] = self.hostname
        fields["utcoffset"] = utcoffset()
        fields["pid"] = self.pid
        fields["clock"] = self.clock.forward()
        if "timestamp" not in fields:
            fields["timestamp"] = time()
        fields["type"] = type
        buffered = self._group_buffer["task"]
        buffered.append(fields)
        if len(buffered) >= self.buffer_limit:
            self.flush(errors=False, groups=True)
        else:
            self._wake_flusher()

    def _heard(self, routing_key: str) -> bool:
        """Whether an event published now with ``routing_key`` would reach any consumer.

        Asked for every task event, so the answer is kept for ``HEARD_CACHE_SECONDS``, and the
        task loop never waits for the flusher: the lookup shares the producer's channel, so it
        needs the dispatcher's lock, which the flusher holds while it publishes. While it is
        taken, the last answer stands.
        """
        now = monotonic()
        known = self._heard_at.get(routing_key)
        if known is not None and now - known[0] < HEARD_CACHE_SECONDS:
            return known[1]
        producer = self.producer
        if producer is None:
            return True  # closed: Celery's send buffers or drops it as it always has
        routes = getattr(producer.channel, "routes", None)
        if routes is None:  # not pgcelery's transport: ask nothing, send everything
            return True
        if not self.mutex.acquire(blocking=False):
            return True if known is None else known[1]
        try:
            heard = bool(routes(self.exchange.name, routing_key))
        except Exception:  # the database is away: buffer, and let the publish decide
            return True
        finally:
            self.mutex.release()
        self._heard_at[routing_key] = (now, heard)
        return heard

    def _wake_flusher(self) -> None:
        # Called for every buffered event: setting an Event takes its lock and notifies.
        if not self._armed.is_set():
            self._armed.set()

    def _flush_loop(self) -> None:
        while not self._stopped.is_set():
            self._armed.wait()
            if self._stopped.wait(FLUSH_INTERVAL):
                return
            self._armed.clear()
            self.flush(errors=True, groups=True)

    def close(self) -> None:
        if self._flusher is not None:
            self._stopped.set()
            self._armed.set()
            if self._flusher is not threading.current_thread():
                self._flusher.join(timeout=5)
            self._flusher = None
            self.flush(errors=True, groups=True)
        super().close()


class PgEvents(Events):
    """``app.events`` of a pgcelery app: its ``Dispatcher`` is :class:`BatchingEventDispatcher`."""

    dispatcher_cls = "pgcelery.observability.events:BatchingEventDispatcher"
