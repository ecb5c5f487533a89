"""A channel closing while the database refuses connections: what it could not hand back comes
back when its lease runs out, instead of being renewed for ever by a channel that is gone."""

from __future__ import annotations

import psycopg
from kombu import Connection

from pgcelery.broker import transport
from pgcelery.settings import Settings
from tests.support.postgres import libpq
from tests.support.waiting import wait_until


def _refuse_connections(admin_url: str, database: str, refuse: bool) -> None:
    with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(not refuse).lower()}')
        if refuse:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )


def test_unreleased_messages_come_back_when_their_lease_runs_out(
    database_url: str, pg_admin_url: str
) -> None:
    transport.install()
    database = libpq(database_url).rsplit("/", 1)[1].split("?")[0]
    options = {"visibility_timeout": 1.0, "polling_interval": 0.05}
    url = Settings(DATABASE_URL=database_url).broker_url
    with Connection(url, transport_options=options) as producer:
        producer.SimpleQueue("stranded").put({"n": 1})
    consumer = Connection(url, transport_options=options)
    got = consumer.SimpleQueue("stranded").get(timeout=10)
    assert got.payload == {"n": 1}
    channel = consumer.default_channel
    renewer = channel._renewer
    assert renewer is not None
    assert renewer.held()
    _refuse_connections(pg_admin_url, database, refuse=True)
    try:
        consumer.close()  # the hand-back fails: the database refuses every connection
        assert renewer.held() == {}
    finally:
        _refuse_connections(pg_admin_url, database, refuse=False)
    with Connection(url, transport_options=options) as other:
        again = wait_until(
            lambda: _get(other), timeout=20, what="the message back after its lease ran out"
        )
        assert again.payload == {"n": 1}
        assert again.delivery_info["redelivered"]
        again.ack()


def _get(conn: Connection) -> object:
    from queue import Empty

    try:
        return conn.SimpleQueue("stranded").get(timeout=0.5)
    except Empty:
        return None
