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

from pgcelery import dsn
from pgcelery.broker import transport
from pgcelery.broker.broadcast import ChannelBroadcast
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

    def __init__(
        self, url: str, name: str, exchange: Exchange, routing_key: str = "", **options: Any
    ) -> None:
        self.conn = _connection(url, **options)
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


def test_a_consumer_whose_binding_was_swept_gets_it_back(
    database_url: str, listeners: list[Listener]
) -> None:
    """A receiver that stalled for longer than ``binding_ttl`` (or sat out an outage) may have
    its binding swept by another process: its next refresh restores it, and it receives
    broadcasts again instead of silently nothing."""
    topic = Exchange("pgc.test.events", type="topic", durable=False)
    stalled = Listener(database_url, "ev.stalled", topic, "#", binding_ttl=3)
    listeners.append(stalled)
    bindings = "SELECT count(*) FROM pgcelery_binding WHERE queue = 'ev.stalled'"
    assert _scalar(database_url, bindings) == 1
    with psycopg.connect(libpq(database_url), autocommit=True) as db:
        db.execute("UPDATE pgcelery_binding SET expires_at = now() - interval '1 second'")
    with _connection(database_url) as other:
        swept = other.default_channel.broadcast.registry.sweep(other.default_channel._execute)
    assert swept == 1
    assert _scalar(database_url, bindings) == 0

    def rebound() -> bool:
        stalled.drain()
        return bool(_scalar(database_url, bindings) == 1)

    wait_until(rebound, timeout=30, what="the binding to come back")
    with _connection(database_url) as conn:
        Producer(conn.channel(), exchange=topic).publish(
            {"key": "task.succeeded"}, routing_key="task.succeeded", declare=[topic]
        )

    def received() -> bool:
        stalled.drain()
        return bool(stalled.received)

    wait_until(received, timeout=30, what="the broadcast")
    assert [b["key"] for b in stalled.received] == ["task.succeeded"]


def _counting_claims(channel: Any) -> list[int]:
    """Count the claims a channel makes (it claims through ``_claim``)."""
    claims: list[int] = []
    original = channel._claim

    def counted(queues: list[str], limit: int) -> Any:
        claims.append(limit)
        return original(queues, limit)

    channel._claim = counted
    return claims


def test_the_event_timer_does_not_make_a_worker_claim_more_often(database_url: str) -> None:
    """A worker's gossip queue is read from the log on the short events timer when nothing
    listens (here: PgBouncer mode); the worker's task queues are still claimed only once per
    drain_events call and every polling interval, not at every tick of that timer."""
    topic = Exchange("pgc.test.events", type="topic", durable=False)
    gossip = Queue("gossip-like", topic, routing_key="worker.#", auto_delete=True, durable=False)
    with _connection(database_url, listen=False, events_poll_interval=0.05) as conn:
        Consumer(conn.channel(), [gossip], no_ack=True).consume()
        tasks = conn.channel()
        claims = _counting_claims(tasks)
        Consumer(tasks, [Queue("idle-tasks")], no_ack=True).consume()
        assert conn.transport._poll_wait() == 0.05
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=1.5)
    # The first round, then one poll a second later: never one per 0.05 s tick (30).
    assert 1 <= len(claims) <= 3


def test_a_process_that_listens_anyway_reads_events_by_notify(database_url: str) -> None:
    """In a worker (it listens for its task queues), an event queue such as gossip's is woken by
    NOTIFY like everything else: no timer, no extra cost."""
    topic = Exchange("pgc.test.events", type="topic", durable=False)
    gossip = Queue("gossip-like", topic, routing_key="worker.#", auto_delete=True, durable=False)
    received: list[Any] = []
    with _connection(database_url) as conn:
        consumer = Consumer(conn.channel(), [gossip], no_ack=True)
        consumer.register_callback(lambda body, message: received.append(body))
        consumer.consume()
        Consumer(conn.channel(), [Queue("worker-tasks")], no_ack=True).consume()
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.2)
        assert conn.transport._poll_wait() == conn.transport.polling_interval
        with _connection(database_url) as other:
            Producer(other.channel(), exchange=topic).publish(
                {"type": "worker-heartbeat"}, routing_key="worker.heartbeat", declare=[topic]
            )

        def heard() -> bool:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.05)
            return bool(received)

        wait_until(heard, timeout=30, what="the heartbeat")
    assert received == [{"type": "worker-heartbeat"}]
