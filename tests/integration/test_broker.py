"""The pgcelery transport against a real PostgreSQL: claims, leases, fencing, acks, priorities."""

from __future__ import annotations

import time
from queue import Empty

import psycopg
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu import Connection
from kombu.message import Message
from kombu.simple import SimpleQueue

from pgcelery import create_app, dsn
from pgcelery.broker import listener as notify
from pgcelery.broker import transport
from pgcelery.settings import Settings
from tests.support.postgres import libpq
from tests.support.waiting import wait_until


def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(libpq(url)) as conn:
        return conn.execute(query).fetchall()


def _kombu(url: str, **options: object) -> Connection:
    settings = Settings(DATABASE_URL=url)
    return Connection(
        settings.broker_url,
        transport_options={"visibility_timeout": 1.0, "polling_interval": 0.05, **options},
    )


def test_priority_orders_claims_within_a_queue(runs_app: Celery, database_url: str) -> None:
    for label, priority in [("low", 0), ("mid", 5), ("high", 9), ("low2", 0)]:
        runs_app.send_task("tests.record_run", args=(label,), priority=priority)
    with start_worker(runs_app, pool="solo", concurrency=1, perform_ping_check=False):
        wait_until(lambda: len(_rows(database_url, "SELECT 1 FROM test_runs")) == 4)
    order = [r[0] for r in _rows(database_url, "SELECT label FROM test_runs ORDER BY at")]
    assert order == ["high", "mid", "low", "low2"]


def test_ack_deletes_and_table_stays_empty(runs_app: Celery, database_url: str) -> None:
    with start_worker(runs_app, pool="solo", concurrency=1, perform_ping_check=False):
        results = [runs_app.send_task("tests.add", args=(i, i)) for i in range(50)]
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(50)]
    assert _rows(database_url, "SELECT count(*) FROM kombu_message") == [(0,)]


def test_lease_expiry_redelivers_and_fences_the_old_holder(database_url: str) -> None:
    with _kombu(database_url) as first, _kombu(database_url) as second:
        one, two = first.SimpleQueue("lease-test"), second.SimpleQueue("lease-test")
        one.put({"n": 1})
        held = one.get(timeout=5)
        assert held.payload == {"n": 1}
        assert not held.delivery_info.get("redelivered")
        # Stop renewing, as a worker cut off from the database would.
        held.channel._lease_renewer().stop()
        again = wait_until(lambda: _try_get(two), timeout=15)
        assert again.payload == {"n": 1}
        assert again.delivery_info["redelivered"] is True
        held.ack()  # the old holder lost its lease: this must not delete the new delivery
        held.channel._acks.flush_now()  # acks ride the next claim; send this one now
        assert _rows(database_url, "SELECT count(*) FROM kombu_message") == [(1,)]
        again.ack()
        again.channel._acks.flush_now()
        assert _rows(database_url, "SELECT count(*) FROM kombu_message") == [(0,)]


def _try_get(simple: SimpleQueue) -> Message | None:
    try:
        return simple.get(timeout=0.2)
    except Empty:
        return None


def test_renewal_keeps_a_held_message_from_others(database_url: str) -> None:
    with _kombu(database_url) as first, _kombu(database_url) as second:
        one, two = first.SimpleQueue("renew-test"), second.SimpleQueue("renew-test")
        one.put({"n": 2})
        held = one.get(timeout=5)
        deadline = time.monotonic() + 3.0  # three visibility timeouts
        while time.monotonic() < deadline:
            assert _try_get(two) is None
        held.ack()
    # Closing the connection flushed the pending ack.
    assert _rows(database_url, "SELECT count(*) FROM kombu_message") == [(0,)]


def test_reject_requeue_is_visible_at_once_and_reject_deletes(database_url: str) -> None:
    with _kombu(database_url, visibility_timeout=60) as conn:
        simple = conn.SimpleQueue("reject-test")
        simple.put({"n": 3})
        simple.get(timeout=5).reject(requeue=True)
        again = simple.get(timeout=2)
        assert again.payload == {"n": 3}
        assert again.delivery_info["redelivered"] is True
        again.reject(requeue=False)
        assert _rows(database_url, "SELECT count(*) FROM kombu_message") == [(0,)]


def test_polling_interval_is_honoured_in_poll_only_mode(database_url: str) -> None:
    settings = Settings(
        DATABASE_URL=database_url,
        PGCELERY_LISTEN=False,
        PGCELERY_POLLING_INTERVAL=0.05,
        PGCELERY_METRICS_ENABLED=False,
    )
    app = create_app("poll-only", include=["tests.support.tasks"], settings=settings)
    listeners_before = set(notify._LISTENERS)
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False):
        started = time.monotonic()
        assert app.send_task("tests.add", args=(1, 1)).get(timeout=10) == 2
        assert time.monotonic() - started < 5
    broker_conninfo = libpq(settings.database_url)
    new = {key for key in set(notify._LISTENERS) - listeners_before if key[1] == broker_conninfo}
    # Only the result waiter listens; the broker did not open a LISTEN connection of its own.
    assert len(new) <= 1
    app.close()


def test_an_ack_is_sent_soon_even_when_nothing_is_claimed(database_url: str) -> None:
    with _kombu(database_url, visibility_timeout=60) as conn:
        simple = conn.SimpleQueue("ack-timer")
        simple.put({"n": 4})
        simple.get(timeout=5).ack()
        # No further claim carries it: the timer sends it within milliseconds.
        wait_until(
            lambda: _rows(database_url, "SELECT count(*) FROM kombu_message") == [(0,)],
            timeout=5,
        )


def test_a_consumer_is_woken_by_its_own_queues_only(database_url: str) -> None:
    """A NOTIFY carries the queue id: publishing to another queue (tasks an event receiver or a
    worker of another queue does not consume) must not wake this consumer."""
    transport.install()
    with _kombu(database_url, polling_interval=60.0) as consumer, _kombu(database_url) as producer:
        mine = consumer.SimpleQueue("wake-mine")
        served = consumer.transport
        mine.consumer.consume()
        channel = mine.channel
        ids = {name: channel._queue_id(name) for name in ("wake-mine", "wake-other")}
        seen: list[tuple[str | None, bool]] = []

        # Subscribed after the transport, so it runs right after the transport's callback
        # for the same notification and sees what that callback did.
        def record(payload: str | None) -> None:
            seen.append((payload, served._wake.is_set()))

        notify.subscribe(channel._conninfo, "pgcelery_message", record)
        try:
            served._wake.clear()
            producer.SimpleQueue("wake-other").put({"n": 1})
            producer.SimpleQueue("wake-mine").put({"n": 2})
            wait_until(lambda: any(p == str(ids["wake-mine"]) for p, _ in seen), timeout=30)
        finally:
            notify.unsubscribe(channel._conninfo, "pgcelery_message", record)
        assert (str(ids["wake-other"]), False) in seen
        assert (str(ids["wake-mine"]), True) in seen
        assert mine.get(timeout=5).payload == {"n": 2}


def test_a_closed_connection_stops_listening(database_url: str) -> None:
    """The process-wide listener outlives connections: a closed one must not stay subscribed
    (an event receiver or a client reconnecting all day would pile up callbacks), and the
    last one to leave closes the LISTEN connection of that database."""
    transport.install()
    conninfo = dsn.libpq_url(database_url)
    assert notify.status(conninfo) is None
    with _kombu(database_url) as conn:
        conn.SimpleQueue("closing").consumer.consume()
        found = wait_until(lambda: notify.status(conninfo), what="a listener")
        assert found.channels >= 1
    assert notify.status(conninfo) is None
    assert not notify.listening(conninfo)
