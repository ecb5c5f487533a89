"""Dead letters: the claim that finds a message delivered too often moves it out of the queue,
its task's result becomes FAILURE, and operators list, replay and purge them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
from celery import Celery
from kombu import Connection

from pgcelery.broker import transport
from pgcelery.cli import main
from pgcelery.exceptions import DeliveryLimitExceeded
from pgcelery.observability.metrics import task_metrics
from pgcelery.settings import Settings
from tests.support.postgres import libpq, scalar
from tests.support.waiting import wait_until
from tests.support.workers import solo_worker


def _execute(url: str, query: str, params: tuple[object, ...] = ()) -> None:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(query, params)


@pytest.fixture
def kombu(database_url: str) -> Iterator[Connection]:
    transport.install()
    with Connection(
        Settings(DATABASE_URL=database_url).broker_url,
        transport_options={"polling_interval": 0.05, "max_deliveries": 3},
    ) as conn:
        yield conn


def test_a_message_delivered_the_limit_is_buried_not_delivered(
    kombu: Connection, database_url: str
) -> None:
    queue = kombu.SimpleQueue("poisoned")
    queue.put({"n": 1})
    queue.put({"n": 2})
    # As if three workers had each died with the first message (their leases ran out).
    _execute(
        database_url,
        "UPDATE kombu_message SET deliveries = 3, claimed_by = 'host:4242'"
        " WHERE id = (SELECT min(id) FROM kombu_message)",
    )
    message = queue.get(timeout=10)
    assert message.payload == {"n": 2}
    message.ack()
    wait_until(lambda: scalar(database_url, "SELECT count(*) FROM kombu_message") == 0)
    with psycopg.connect(libpq(database_url)) as conn:
        row = conn.execute(
            "SELECT queue, deliveries, last_worker, reason, payload::jsonb ->> 'body' IS NOT NULL"
            " FROM pgcelery_dead_letter"
        ).fetchall()
    assert row == [("poisoned", 3, "host:4242", "delivery limit", True)]


def test_a_handed_back_delivery_does_not_count(kombu: Connection, database_url: str) -> None:
    queue = kombu.SimpleQueue("handed-back")
    queue.put({"n": 1})
    for _ in range(5):
        # Received, then the consumer goes away without starting it: handed back uncounted.
        with Connection(kombu.as_uri(include_password=True)) as other:
            got = other.SimpleQueue("handed-back").get(timeout=10)
            assert got.payload == {"n": 1}
    assert scalar(database_url, "SELECT max(deliveries) FROM kombu_message") == 0
    assert scalar(database_url, "SELECT count(*) FROM pgcelery_dead_letter") == 0


def test_an_unreadable_payload_is_buried_at_once(kombu: Connection, database_url: str) -> None:
    queue = kombu.SimpleQueue("garbled")
    queue.put({"n": 1})
    _execute(database_url, "UPDATE kombu_message SET payload = 'not json {'")
    queue.put({"n": 2})
    assert queue.get(timeout=10).payload == {"n": 2}
    assert scalar(database_url, "SELECT count(*) FROM pgcelery_dead_letter") == 1


def _count(queue: str) -> float:
    value = task_metrics().dead_letters.labels(queue, "delivery limit")._value.get()
    return float(value)


def test_the_task_fails_with_delivery_limit_exceeded_and_can_be_replayed(
    app: Celery,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    before = _count("celery")
    result = app.send_task("tests.add", args=(2, 3))
    _execute(database_url, "UPDATE kombu_message SET deliveries = 5")
    with solo_worker(app):
        with pytest.raises(DeliveryLimitExceeded, match=r"tests.add .*delivered 5 times"):
            result.get(timeout=20)
        assert _count("celery") == before + 1

        assert main(["dead-letters", "list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(d["task_id"], d["task_name"], d["deliveries"]) for d in listed] == [
            (result.id, "tests.add", 5)
        ]
        # Replayed with a fresh delivery count: it runs, and the FAILURE gives way to its result.
        assert main(["dead-letters", "replay", str(listed[0]["id"])]) == 0
        # A new AsyncResult: the first one keeps the FAILURE it already read.
        assert app.AsyncResult(result.id).get(timeout=20) == 5
    assert scalar(database_url, "SELECT count(*) FROM pgcelery_dead_letter") == 0
    assert main(["dead-letters", "replay", "12345"]) == 1


def test_purge_by_id_and_by_age(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    for i, age in enumerate(["0", "2 days", "10 days"]):
        _execute(
            database_url,
            "INSERT INTO pgcelery_dead_letter (id, queue, payload, deliveries, reason, dead_at)"
            " VALUES (%s, 'q', '{}', 5, 'delivery limit', now() - %s::interval)",
            (i + 1, age),
        )
    assert main(["dead-letters", "purge", "--older-than", "7d"]) == 0
    assert scalar(database_url, "SELECT count(*) FROM pgcelery_dead_letter") == 2
    assert main(["dead-letters", "purge", "2"]) == 0
    assert scalar(database_url, "SELECT count(*) FROM pgcelery_dead_letter") == 1
    assert scalar(database_url, "SELECT min(id) FROM pgcelery_dead_letter") == 1
    assert main(["dead-letters", "purge"]) == 1
