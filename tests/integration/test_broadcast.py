"""Fanout on the pgcelery transport: every binding gets each broadcast once, retention holds."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from pgcelery import dsn, transport
from pgcelery.broadcast import ChannelBroadcast
from tests.support.postgres import libpq
from tests.support.waiting import wait_until

FANOUT = Exchange("pgc.test.fanout", type="fanout", durable=False)


def _connection(url: str, **options: Any) -> Connection:
    transport.install()
    return Connection(dsn.broker_url(url), transport_options=options)


def _scalar(url: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(query, params).fetchone()
        assert row is not None
        return row[0]


class Listener:
    """One consuming connection with an ephemeral queue bound to ``exchange``."""

    def __init__(self, url: str, name: str, exchange: Exchange, routing_key: str = "") -> None:
        self.conn = _connection(url)
        self.received: list[Any] = []
        queue = Queue(name, exchange, routing_key=routing_key, auto_delete=True, durable=False)
        self.consumer = Consumer(self.conn.channel(), [queue], no_ack=True)
        self.consumer.register_callback(lambda body, message: self.received.append(body))
        self.consumer.consume()

    def drain(self) -> None:
        with contextlib.suppress(TimeoutError):
            self.conn.drain_events(timeout=0.05)

    def close(self) -> None:
        self.conn.release()


@pytest.fixture
def listeners(database_url: str) -> Iterator[list[Listener]]:
    found: list[Listener] = []
    yield found
    for listener in found:
        listener.close()


def test_each_binding_gets_every_broadcast_exactly_once(
    database_url: str, listeners: list[Listener]
) -> None:
    listeners += [Listener(database_url, f"fan.{n}", FANOUT) for n in range(2)]
    other = Listener(database_url, "other", Exchange("pgc.test.other", type="fanout"))
    listeners.append(other)
    with _connection(database_url) as conn:
        producer = Producer(conn.channel(), exchange=FANOUT)
        for n in range(25):
            producer.publish({"n": n}, declare=[FANOUT])

    def complete() -> bool:
        for listener in listeners:
            listener.drain()
        return all(len(x.received) >= 25 for x in listeners[:2])

    wait_until(complete, timeout=30, what="both bindings to receive 25 broadcasts")
    for listener in listeners:
        listener.drain()
    for listener in listeners[:2]:
        assert [body["n"] for body in listener.received] == list(range(25))
    assert other.received == []


def test_topic_broadcast_reaches_only_matching_ephemeral_queues(
    database_url: str, listeners: list[Listener]
) -> None:
    topic = Exchange("pgc.test.events", type="topic", durable=False)
    tasks = Listener(database_url, "ev.tasks", topic, "task.#")
    everything = Listener(database_url, "ev.all", topic, "#")
    listeners += [tasks, everything]
    with _connection(database_url) as conn:
        producer = Producer(conn.channel(), exchange=topic)
        for key in ("task.started", "worker.heartbeat", "task.succeeded"):
            producer.publish({"key": key}, routing_key=key, declare=[topic])

    def complete() -> bool:
        tasks.drain()
        everything.drain()
        return len(everything.received) >= 3 and len(tasks.received) >= 2

    wait_until(complete, timeout=30, what="topic broadcasts")
    assert [b["key"] for b in tasks.received] == ["task.started", "task.succeeded"]
    assert [b["key"] for b in everything.received] == [
        "task.started",
        "worker.heartbeat",
        "task.succeeded",
    ]
    # One row per event, however many receivers; nothing in the ordinary message table.
    assert _scalar(database_url, "SELECT count(*) FROM pgcelery_broadcast") == 3
    assert _scalar(database_url, "SELECT count(*) FROM kombu_message") == 0


def test_broadcast_sent_before_a_message_is_delivered_before_it(database_url: str) -> None:
    """``revoke`` then ``apply_async``: the worker must see the revoke before the task, even
    when its remote control channel has no reason to read the log yet (here: poll-only mode
    with a long interval, so only the claim can tell it that a broadcast is waiting)."""
    tasks = Queue("pgc.test.ordered", Exchange("pgc.test.ordered"), "pgc.test.ordered")
    order: list[str] = []
    with _connection(database_url, listen=False, polling_interval=60) as conn:
        control = Queue("pgc.test.ctl", FANOUT, auto_delete=True, durable=False)
        Consumer(
            conn.channel(), [control], no_ack=True, callbacks=[lambda b, m: order.append(b)]
        ).consume()
        worker = Consumer(conn.channel(), [tasks], callbacks=[lambda b, m: order.append(b)])
        worker.consume()
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.2)  # both channels have read: nothing is due for 60 s
        with _connection(database_url) as producer_conn:
            producer = Producer(producer_conn.channel())
            producer.publish("revoke", exchange=FANOUT, declare=[FANOUT])
            producer.publish(
                "task", exchange=tasks.exchange, routing_key="pgc.test.ordered", declare=[tasks]
            )

        def delivered() -> bool:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.05)
            return "task" in order

        wait_until(delivered, timeout=10, what="the task message")
    assert order == ["revoke", "task"]


def test_topic_events_with_no_receiver_write_nothing(database_url: str) -> None:
    topic = Exchange("pgc.test.quiet", type="topic", durable=False)
    with _connection(database_url) as conn:
        producer = Producer(conn.channel(), exchange=topic)
        for _ in range(10):
            producer.publish({"x": 1}, routing_key="task.sent", declare=[topic])
    assert _scalar(database_url, "SELECT count(*) FROM pgcelery_broadcast") == 0


def test_retention_holds_under_ten_thousand_broadcasts(database_url: str) -> None:
    options = {"broadcast_max_rows": 500, "broadcast_prune_every": 100}
    with _connection(database_url, **options) as conn:
        producer = Producer(conn.channel(), exchange=FANOUT)
        for n in range(10_000):
            producer.publish({"n": n}, declare=[FANOUT] if n == 0 else [])
    rows = _scalar(database_url, "SELECT count(*) FROM pgcelery_broadcast")
    assert 500 <= rows <= 600
    newest = _scalar(database_url, "SELECT payload FROM pgcelery_broadcast ORDER BY id DESC")
    assert json.loads(base64.b64decode(json.loads(newest)["body"])) == {"n": 9999}


def test_age_limit_prunes_old_broadcasts(database_url: str) -> None:
    with _connection(database_url, broadcast_max_age=0.0) as conn:
        producer = Producer(conn.channel(), exchange=FANOUT)
        producer.publish({"n": 0}, declare=[FANOUT])
        producer.publish({"n": 1})
        channel = conn.default_channel
        broadcast: ChannelBroadcast = channel.broadcast
        wait_until(lambda: broadcast.prune() >= 0 and _count(database_url) == 0, timeout=10)


def _count(url: str) -> int:
    return int(_scalar(url, "SELECT count(*) FROM pgcelery_broadcast"))


def test_bindings_of_dead_consumers_expire_with_their_messages(database_url: str) -> None:
    """A consumer that stops refreshing (killed) loses its binding and its queued replies."""
    reply = Exchange("reply.test.pidbox", type="direct", durable=False)
    queue = Queue("dead.reply.test.pidbox", reply, routing_key="dead", auto_delete=True)
    dead = _connection(database_url, binding_ttl=0.2)
    queue(dead.channel()).declare()
    with _connection(database_url) as conn:
        producer = Producer(conn.channel())
        producer.publish({"r": 1}, exchange=reply, routing_key="dead", declare=[reply])
        assert _scalar(database_url, "SELECT count(*) FROM kombu_message") == 1
        wait_until(
            lambda: conn.default_channel.broadcast.registry.sweep(conn.default_channel._execute),
            timeout=10,
            what="the binding to expire",
        )
        assert _scalar(database_url, "SELECT count(*) FROM pgcelery_binding") == 0
        assert _scalar(database_url, "SELECT count(*) FROM kombu_message") == 0
        # With no live binding, a late reply has nowhere to go and is dropped.
        producer.publish({"r": 2}, exchange=reply, routing_key="dead", declare=[reply])
        assert _scalar(database_url, "SELECT count(*) FROM kombu_message") == 0
    dead.release()
