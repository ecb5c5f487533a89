"""Task events travel in batches, reach every kind of receiver, and cost nothing unheard."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Consumer, Queue

from pgcelery import create_app, dsn
from pgcelery.broker import transport
from pgcelery.embedded import EmbeddedPostgres
from pgcelery.observability.events import BATCH_ROUTING_KEY, BatchingEventDispatcher
from pgcelery.schema import migrations
from pgcelery.settings import Settings
from tests.support.events import Collector
from tests.support.postgres import scalar
from tests.support.waiting import wait_until
from tests.support.workers import free_port

BROADCASTS = "SELECT count(*) FROM pgcelery_broadcast"


@pytest.fixture
def dispatcher(app: Celery) -> Iterator[BatchingEventDispatcher]:
    connection = app.connection_for_write()
    found = app.events.Dispatcher(connection, hostname="batching@test")
    assert isinstance(found, BatchingEventDispatcher)
    yield found
    found.close()
    connection.release()


@pytest.fixture
def collector(app: Celery) -> Iterator[Collector]:
    found = Collector(app)
    yield found
    found.stop()


def _send_task_events(dispatcher: BatchingEventDispatcher, tasks: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(tasks)]
    for task_id in ids:
        dispatcher.send("task-received", uuid=task_id, name="tests.add")
        dispatcher.send("task-started", uuid=task_id)
        dispatcher.send("task-succeeded", uuid=task_id, result="5", runtime=0.001)
    return ids


def test_task_events_arrive_in_batches(
    app: Celery, database_url: str, dispatcher: BatchingEventDispatcher, collector: Collector
) -> None:
    wait_until(lambda: dispatcher._heard(BATCH_ROUTING_KEY), timeout=30, what="the binding")
    ids = _send_task_events(dispatcher, 100)
    wait_until(lambda: len(collector.of("task-succeeded")) == 100, timeout=30, what="events")
    for kind in ("task-received", "task-started", "task-succeeded"):
        assert [e["uuid"] for e in collector.of(kind)] == ids
    assert collector.of("task-received")[0]["hostname"] == "batching@test"
    # 300 events, but only a handful of rows, commits and notifications.
    assert scalar(database_url, BROADCASTS) <= 30


def test_a_lone_event_is_flushed_without_waiting_for_more(
    dispatcher: BatchingEventDispatcher, collector: Collector
) -> None:
    wait_until(lambda: dispatcher._heard(BATCH_ROUTING_KEY), timeout=30, what="the binding")
    [task_id] = _send_task_events(dispatcher, 1)
    # The dispatcher stays open: its timer, not close(), publishes the batch.
    wait_until(lambda: collector.of("task-succeeded", task_id), timeout=10, what="the event")


def test_close_publishes_what_is_still_buffered(
    app: Celery, database_url: str, collector: Collector
) -> None:
    connection = app.connection_for_write()
    dispatcher = app.events.Dispatcher(connection, hostname="closing@test")
    try:
        wait_until(lambda: dispatcher._heard(BATCH_ROUTING_KEY), timeout=30, what="the binding")
        dispatcher._armed.clear()
        dispatcher.on_send_buffered = None  # no timer: only close() can publish these
        ids = _send_task_events(dispatcher, 5)
        assert scalar(database_url, BROADCASTS) == 0
    finally:
        dispatcher.close()
        connection.release()
    wait_until(lambda: len(collector.of("task-succeeded")) == 5, timeout=30, what="events")
    assert [e["uuid"] for e in collector.of("task-succeeded")] == ids


def test_task_events_nobody_listens_to_are_not_written(
    database_url: str, dispatcher: BatchingEventDispatcher
) -> None:
    _send_task_events(dispatcher, 50)
    dispatcher.send("worker-heartbeat", freq=2.0)
    dispatcher.close()
    assert scalar(database_url, BROADCASTS) == 0


def test_a_consumer_bound_to_one_event_type_gets_single_events(
    app: Celery, database_url: str, dispatcher: BatchingEventDispatcher
) -> None:
    """Only ``#``-style bindings match a ``task.multi`` batch; a narrower binding still gets
    its events one message each, as from a stock Celery worker."""
    received: list[Any] = []
    with app.connection_for_read() as conn:
        exchange = dispatcher.exchange
        queue = Queue("only-succeeded", exchange, routing_key="task.succeeded", auto_delete=True)
        consumer = Consumer(conn.channel(), [queue], no_ack=True)
        consumer.register_callback(lambda body, message: received.append(body))
        consumer.consume()
        wait_until(lambda: dispatcher._heard("task.succeeded"), timeout=30, what="the binding")
        assert not dispatcher._heard(BATCH_ROUTING_KEY)
        ids = _send_task_events(dispatcher, 3)

        def drained() -> bool:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.05)
            return len(received) >= 3

        wait_until(drained, timeout=30, what="three task-succeeded events")
    assert [(body["type"], body["uuid"]) for body in received] == [
        ("task-succeeded", task_id) for task_id in ids
    ]
    assert scalar(database_url, BROADCASTS) == 3


def test_a_plain_celery_app_after_install_receives_the_batches(
    database_url: str, dispatcher: BatchingEventDispatcher
) -> None:
    """celery-exporter's setup (docs/howto/monitoring.md): a bare ``Celery(broker=…)`` app, not
    one from ``create_app``, in a process where ``transport.install()`` ran first."""
    transport.install()
    plain = Celery("exporter-like", broker=dsn.broker_url(database_url))
    try:
        collector = Collector(plain)
        try:
            wait_until(lambda: dispatcher._heard(BATCH_ROUTING_KEY), timeout=30, what="binding")
            ids = _send_task_events(dispatcher, 5)
            wait_until(lambda: len(collector.of("task-succeeded")) == 5, timeout=30, what="events")
            assert [e["uuid"] for e in collector.of("task-received")] == ids
            assert scalar(database_url, BROADCASTS) < 5
        finally:
            collector.stop()
    finally:
        plain.close()


def test_an_event_sent_during_an_outage_is_buffered_not_retried_forever() -> None:
    """Celery's heartbeat thread sends with retry=True under the dispatcher's lock; a retry
    that never ends would keep the consumer's restart (worker-offline, same lock) from ever
    reconnecting once the database is back."""
    root = Path(tempfile.mkdtemp(prefix="pgcelery-event-outage-"))
    server = EmbeddedPostgres(root / "pgdata", port=free_port(), durable=False)
    server.start()
    try:
        url = server.create_database("event_outage")
        migrations.upgrade(url)
        app = create_app(
            "event-outage", settings=Settings(DATABASE_URL=url, PGCELERY_METRICS_ENABLED=False)
        )
        connection = app.connection_for_write()
        dispatcher = app.events.Dispatcher(connection, hostname="outage@test")
        dispatcher.send("worker-heartbeat", retry=True)  # connected while the server is up
        server.stop()
        dispatcher.producer.channel.broadcast.registry._topics.clear()  # must ask the database

        def send_during_outage() -> None:
            dispatcher.send("worker-heartbeat", retry=True)
            dispatcher.send("worker-offline")

        sender = threading.Thread(target=send_during_outage, daemon=True)
        sender.start()
        wait_until(lambda: not sender.is_alive(), timeout=60, what="sends to return")
        assert [event["type"] for event, _ in dispatcher._outbound_buffer] == [
            "worker-heartbeat",
            "worker-offline",
        ]
        dispatcher.close()
        connection.release()
        app.close()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


LISTENING = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
)


def test_an_event_receiver_reads_on_a_timer_and_never_listens(
    app: Celery,
    database_url: str,
    settings: Settings,
    dispatcher: BatchingEventDispatcher,
    collector: Collector,
) -> None:
    """PostgreSQL wakes every listening connection of a database for every NOTIFY: a
    monitor that listened would tax each task published. Remote control still listens."""
    wait_until(lambda: dispatcher._heard(BATCH_ROUTING_KEY), timeout=30, what="the binding")
    ids = _send_task_events(dispatcher, 5)
    wait_until(lambda: len(collector.of("task-succeeded")) == 5, timeout=30, what="events")
    assert [e["uuid"] for e in collector.of("task-started")] == ids
    assert scalar(database_url, LISTENING) == 0

    with app.connection_for_read() as conn:
        # What the receiver does, on a connection this test can look at: it waits for the
        # events interval, not for the (longer) broker polling interval.
        events = Queue("monitor", dispatcher.exchange, routing_key="#", auto_delete=True)
        Consumer(conn.channel(), [events], no_ack=True).consume()
        assert conn.transport._poll_wait() == settings.events_poll_interval < 1.0
        # The query above does see a listener: a consumer of an ordinary queue is one.
        consumer = Consumer(conn.channel(), [Queue("ordinary-queue")], no_ack=True)
        consumer.consume()
        wait_until(lambda: scalar(database_url, LISTENING) == 1, timeout=30, what="a listener")


def test_buffered_events_carry_what_celery_would_give_them(
    dispatcher: BatchingEventDispatcher, collector: Collector
) -> None:
    wait_until(lambda: dispatcher._heard(BATCH_ROUTING_KEY), timeout=30, what="the binding")
    dispatcher.send("task-received", uuid="given-time", name="tests.add", timestamp=1234.5)
    [task_id] = _send_task_events(dispatcher, 1)
    wait_until(lambda: collector.of("task-succeeded", task_id), timeout=30, what="the events")
    [given] = collector.of("task-received", "given-time")
    assert given["timestamp"] == 1234.5
    events = [given, *(collector.of(kind, task_id)[0] for kind in KINDS)]
    assert [e["clock"] for e in events] == sorted({e["clock"] for e in events})
    for event in events:
        assert event["hostname"] == "batching@test"
        assert event["pid"] == os.getpid()
        assert isinstance(event["utcoffset"], int | float)
        assert isinstance(event["timestamp"], float)
    assert collector.of("task-succeeded", task_id)[0]["result"] == "5"


KINDS = ("task-received", "task-started", "task-succeeded")


def test_the_task_loop_never_waits_for_the_flusher(
    dispatcher: BatchingEventDispatcher, collector: Collector
) -> None:
    """The flusher holds the dispatcher's lock while it publishes; asking whether an event is
    heard must not wait for it (the answer it had stands, or "yes" when it had none)."""
    wait_until(lambda: dispatcher._heard(BATCH_ROUTING_KEY), timeout=30, what="the binding")
    answers: list[bool] = []
    with dispatcher.mutex:
        asker = threading.Thread(
            target=lambda: answers.extend(
                [dispatcher._heard(BATCH_ROUTING_KEY), dispatcher._heard("task.never.asked")]
            ),
            daemon=True,
        )
        asker.start()
        asker.join(10)
        assert not asker.is_alive(), "_heard waited for the dispatcher's lock"
    assert answers == [True, True]
