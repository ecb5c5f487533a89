"""Attack: one huge message read into the memory of every worker that claims it.

A task larger than PGCELERY_MAX_MESSAGE_BYTES is refused at ``apply_async`` before anything is
written; a row that large inserted behind pgcelery's back is buried by the worker unread (the
claim does not return its payload) and its task fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
from celery import Celery
from celery.result import AsyncResult

from pgcelery import create_app
from pgcelery.exceptions import DeliveryLimitExceeded, MessageTooLarge
from pgcelery.settings import Settings
from tests.security.conftest import copy_as, insert_message, last_message
from tests.support import postgres
from tests.support.workers import solo_worker

LIMIT = 64 * 1024


@pytest.fixture
def small_app(database_url: str) -> Iterator[Celery]:
    settings = Settings(
        DATABASE_URL=database_url,
        PGCELERY_METRICS_ENABLED=False,
        PGCELERY_PRUNE_INTERVAL=0,
        PGCELERY_MAX_MESSAGE_BYTES=LIMIT,
    )
    app = create_app("pgcelery-size", include=["tests.security.tasks"], settings=settings)
    yield app
    app.close()


def _count(url: str, table: str) -> int:
    with psycopg.connect(postgres.libpq(url)) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("text", ["a" * LIMIT, "é" * (LIMIT // 2)])
def test_a_task_over_the_limit_is_refused_before_anything_is_written(
    small_app: Celery, database_url: str, text: str
) -> None:
    with pytest.raises(MessageTooLarge, match="PGCELERY_MAX_MESSAGE_BYTES"):
        small_app.send_task("tests.security.echo", (text,))
    assert _count(database_url, "kombu_message") == 0
    # Just under the limit still goes.
    small_app.send_task("tests.security.echo", ("a" * (LIMIT // 4),))
    assert _count(database_url, "kombu_message") == 1


def test_an_oversized_row_inserted_by_sql_is_buried_unread(
    small_app: Celery, database_url: str
) -> None:
    small_app.send_task("tests.security.echo", ("small",))
    queue_id, payload = last_message(database_url)
    task_id, huge = copy_as(payload)
    huge["properties"]["padding"] = "x" * (4 * LIMIT)
    insert_message(database_url, queue_id, json.dumps(huge))

    with solo_worker(small_app):
        result = AsyncResult(task_id, app=small_app)
        result.get(timeout=60, propagate=False)
    assert result.state == "FAILURE"
    assert type(result.result).__name__ == DeliveryLimitExceeded.__name__
    with psycopg.connect(postgres.libpq(database_url)) as conn:
        row = conn.execute(
            "SELECT reason, task_id, octet_length(payload) FROM pgcelery_dead_letter"
        ).fetchone()
    assert row is not None
    assert (row[0], row[1]) == ("oversized payload", task_id)
    assert row[2] > 4 * LIMIT, "the payload is kept whole for the operator"
