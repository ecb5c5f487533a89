"""Every connection pgcelery opens carries a connect timeout and TCP keepalives; the broker's
own statements have a statement timeout; poll-only (PgBouncer) mode sends neither startup
options nor prepares statements."""

from __future__ import annotations

from typing import Any

import psycopg
from celery import Celery
from kombu import Connection

from pgcelery import dsn
from pgcelery.broker import transport
from pgcelery.settings import Settings

KEEPALIVES = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


def _client_settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    found = conn.info.get_parameters()
    return {key: found[key] for key in KEEPALIVES if key in found}


def _show(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


def _channel(database_url: str, **options: object) -> tuple[Connection, Any]:
    transport.install()
    kombu = Connection(Settings(DATABASE_URL=database_url).broker_url, transport_options=options)
    return kombu, kombu.default_channel


def test_broker_connections_have_keepalives_and_a_statement_timeout(database_url: str) -> None:
    kombu, channel = _channel(database_url, statement_timeout=12.5)
    with kombu:
        queue = kombu.SimpleQueue("settings")
        queue.put({"n": 1})
        message = queue.get(timeout=10)
        publish, consume = channel._conn("publish"), channel._conn("consume")
        channel._renewer.renew()
        renew = channel._renewer._db
        for conn in (publish, consume, renew):
            assert _client_settings(conn) == KEEPALIVES
            assert _show(conn, "statement_timeout") == "12500ms"
        # Claims and acks commit asynchronously (a server configured so for everything, as the
        # tests' embedded one is, would show "off" on the publishing connection too).
        assert _show(consume, "synchronous_commit") == "off"
        message.ack()


def test_queue_statements_plan_index_scans_on_a_table_that_looks_small(database_url: str) -> None:
    # A fresh, never analyzed kombu_message looks like ten pages to the planner: without the
    # connections' setting the claim joins it by sequential scans, and the plan psycopg
    # prepares then is kept while the table grows (the claim read 2,000 buffers, not 30).
    kombu, channel = _channel(database_url)
    with kombu:
        queue = kombu.SimpleQueue("plans")
        queue.put({"n": 1})
        queue_id = channel._queue_id("plans")
        params = {
            "acked_ids": [1, 2], "acked_tokens": [None, None], "queues": [queue_id],
            "limit": 4, "lease": 30.0, "claimant": "t", "max_bytes": 1 << 20,
            **channel._fair.params([queue_id]),
        }  # fmt: skip
        consume = channel._conn("consume")
        for statement in (channel.claim_sql.fair, channel.claim_sql.in_order):
            with consume.transaction(force_rollback=True):
                plan = consume.execute("EXPLAIN " + statement, params).fetchall()
            text = "\n".join(row[0] for row in plan)
            assert "Index Scan using kombu_message_pkey" in text, text
            assert "Seq Scan on kombu_message" not in text, text
        queue.get(timeout=10).ack()


def test_poll_only_mode_sends_no_startup_options_and_prepares_nothing(database_url: str) -> None:
    kombu, channel = _channel(database_url, listen=False, statement_timeout=12.5)
    with kombu:
        consume = channel._conn("consume")
        assert consume.prepare_threshold is None
        assert _show(consume, "statement_timeout") == "0"
        assert _client_settings(consume) == KEEPALIVES


def test_the_result_backend_pool_has_keepalives(app: Celery, database_url: str) -> None:
    from pgcelery import connections

    with connections.pool(dsn.libpq_url(database_url)).connection() as conn:
        assert _client_settings(conn) == KEEPALIVES
    assert dsn.libpq_url(app.backend.url).startswith(dsn.libpq_url(database_url).split("?")[0])
    assert "keepalives_idle=30" in app.backend.url
