"""The global maintenance tasks on a real worker: view refreshes and result pruning."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from pgcelery import create_app, tenant_context
from pgcelery.exceptions import ConfigurationError
from pgcelery.settings import Settings
from pgcelery.tasks.maintenance import prune_results, refresh_materialized_views
from pgcelery.tenancy import db
from tests.support.postgres import libpq
from tests.support.workers import solo_worker

TIMEOUT = 60
TENANT = "0b1c6a46-6c53-4b0e-9d7b-6c2f8f1f4e11"


def _sql(database_url: str, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def views_app(database_url: str) -> Iterator[Celery]:
    _sql(
        database_url,
        """
        CREATE TABLE sales (id int PRIMARY KEY, amount int NOT NULL);
        INSERT INTO sales VALUES (1, 10);
        CREATE MATERIALIZED VIEW sales_total AS SELECT 1 AS id, sum(amount) AS total FROM sales;
        CREATE UNIQUE INDEX sales_total_id ON sales_total (id);
        CREATE MATERIALIZED VIEW sales_count AS SELECT count(*) AS n FROM sales;
        """,
    )
    settings = Settings(
        DATABASE_URL=database_url,
        metrics_enabled=False,
        materialized_views=["public.sales_total", "sales_count"],
    )
    app = create_app("pgcelery-views-test", settings=settings)
    yield app
    app.close()
    db.dispose()


@pytest.fixture
def views_worker(views_app: Celery) -> Iterator[TestWorkController]:
    with solo_worker(views_app) as controller:
        yield controller


def test_views_are_refreshed_concurrently_when_a_unique_index_allows_it(
    views_app: Celery, views_worker: TestWorkController, database_url: str
) -> None:
    _sql(database_url, "INSERT INTO sales VALUES (2, 5)")
    # A global task ignores the sender's tenant.
    with tenant_context(TENANT):
        reply = refresh_materialized_views.delay().get(timeout=TIMEOUT)
    assert reply == {
        "concurrently": ["public.sales_total"],
        "blocking": ["sales_count"],
        "missing": [],
    }
    assert _sql(database_url, "SELECT total FROM sales_total") == [(15,)]
    assert _sql(database_url, "SELECT n FROM sales_count") == [(2,)]


def test_a_missing_view_fails_the_refresh_naming_it(
    views_app: Celery, views_worker: TestWorkController, database_url: str
) -> None:
    _sql(database_url, "DROP MATERIALIZED VIEW sales_count")
    result = refresh_materialized_views.delay()
    result.get(timeout=TIMEOUT, propagate=False)
    assert isinstance(result.result, ConfigurationError)
    assert "sales_count" in str(result.result)
    assert "refreshed: public.sales_total" in str(result.result)


def test_prune_results_deletes_only_expired_results_in_batches(
    app: Celery, worker: TestWorkController, database_url: str
) -> None:
    _sql(
        database_url,
        """
        INSERT INTO celery_taskmeta (id, task_id, status, date_done)
        SELECT nextval('task_id_sequence'), 'old-' || g, 'SUCCESS',
               timezone('UTC', now()) - interval '2 days'
        FROM generate_series(1, 5) g;
        INSERT INTO celery_taskmeta (id, task_id, status, date_done)
        VALUES (nextval('task_id_sequence'), 'fresh', 'SUCCESS', timezone('UTC', now()));
        INSERT INTO celery_tasksetmeta (id, taskset_id, date_done)
        SELECT nextval('taskset_id_sequence'), 'old-group-' || g,
               timezone('UTC', now()) - interval '2 days'
        FROM generate_series(1, 3) g;
        """,
    )
    reply = prune_results.delay(batch_size=2).get(timeout=TIMEOUT)
    assert reply == {"tasks": 5, "groups": 3}
    left = {row[0] for row in _sql(database_url, "SELECT task_id FROM celery_taskmeta")}
    assert "fresh" in left
    assert not any(task_id.startswith("old-") for task_id in left)
    assert _sql(database_url, "SELECT count(*) FROM celery_tasksetmeta") == [(0,)]
