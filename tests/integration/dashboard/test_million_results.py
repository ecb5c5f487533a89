"""With 1,000,000 results stored, every page's queries are index scans and the pages answer fast.

The rows are made in the database (INSERT … SELECT generate_series): 30 days of results, one in
twenty a failure, one in ten with a tenant in its kwargs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery
from starlette.testclient import TestClient

from pgcelery.dashboard.app import Dashboard, create_dashboard
from pgcelery.dashboard.queries import Queries
from pgcelery.settings import Settings

ROWS = 1_000_000
#: Generous for 2 shared cores: an index scan answers in milliseconds, a scan of the table in
#: seconds.
PAGE_SECONDS = 2.0

FILL = """
INSERT INTO celery_taskmeta (id, task_id, status, result, date_done, traceback, name, args,
                             kwargs, worker, retries, queue)
SELECT nextval('task_id_sequence'), 'bulk-' || i,
       CASE WHEN i %% 20 = 0 THEN 'FAILURE' ELSE 'SUCCESS' END,
       CASE WHEN i %% 20 = 0
            THEN convert_to('{"exc_type": "Error' || (i %% 3) || '", "exc_message": []}',
                            'UTF8')
            ELSE convert_to(i::text, 'UTF8') END,
       (now() AT TIME ZONE 'UTC') - make_interval(secs => i * 2.592),
       NULL, 'app.task' || (i %% 10), convert_to('[1, 2]', 'UTF8'),
       CASE WHEN i %% 10 = 0
            THEN convert_to('{"tenant_id": "t' || (i %% 1000) || '"}', 'UTF8')
            ELSE convert_to('{}', 'UTF8') END,
       'w@host', 0, 'celery'
FROM generate_series(1, %s) AS i
"""


class RecordingQueries(Queries):
    """The dashboard's own queries, each remembered so the test can EXPLAIN it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.seen: list[tuple[str, Any]] = []

    def fetch(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        self.seen.append((query, params))
        return super().fetch(query, params)


@pytest.fixture(scope="module")
def million(pg_admin_url: str, template_db: str) -> Iterator[str]:
    from tests.support import postgres

    name = postgres.unique_name("pgc_m")
    url = postgres.create_database(pg_admin_url, name, template=template_db)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FILL, (ROWS,))
        conn.execute("VACUUM ANALYZE celery_taskmeta")
        counted = conn.execute("SELECT count(*) FROM celery_taskmeta").fetchone()
    assert counted == (ROWS,)
    yield url
    postgres.drop_database(pg_admin_url, name)


@pytest.fixture
def board(million: str) -> Iterator[tuple[TestClient, RecordingQueries]]:
    settings = Settings(DATABASE_URL=million, PGCELERY_METRICS_ENABLED=False)
    app = Celery("unused")
    web = create_dashboard(settings, app)
    dashboard: Dashboard = web.state.dashboard
    dashboard.queries = RecordingQueries(settings)
    with TestClient(web, base_url="http://localhost") as client:
        yield client, dashboard.queries


def _plan(url: str, query: str, params: Any) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"EXPLAIN (FORMAT JSON) {query}", params).fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def _scans_of_results(plan: dict[str, Any]) -> list[str]:
    found = []
    if plan.get("Relation Name") == "celery_taskmeta":
        found.append(plan["Node Type"])
    for child in plan.get("Plans", ()):
        found.extend(_scans_of_results(child))
    return found


PAGES = [
    "/queues",
    "/tasks",
    "/tasks?state=FAILURE",
    "/tasks?name=app.task3",
    "/tasks?tenant=t420",
    "/tasks?state=SUCCESS&name=app.task1",
    "/tasks?since=2000-01-01T00:00&until=2000-02-01T00:00",
    "/tasks/bulk-500000",
    "/failures",
    "/failures?hours=168",
]


@pytest.mark.parametrize("path", PAGES)
def test_page_is_fast_and_reads_results_through_indexes(
    board: tuple[TestClient, RecordingQueries], million: str, path: str
) -> None:
    client, queries = board
    started = time.monotonic()
    page = client.get(path)
    elapsed = time.monotonic() - started
    assert page.status_code == 200, page.text[:500]
    assert elapsed < PAGE_SECONDS, f"{path} took {elapsed:.2f}s"
    for query, params in queries.seen:
        scans = _scans_of_results(_plan(million, query, params))
        assert "Seq Scan" not in scans, f"{path}: {query} scans the whole table ({scans})"


def test_next_pages_stay_fast(board: tuple[TestClient, RecordingQueries]) -> None:
    client, _ = board
    path = "/tasks?state=FAILURE"
    for _ in range(3):
        started = time.monotonic()
        page = client.get(path)
        assert time.monotonic() - started < PAGE_SECONDS
        cursor = page.text.split("after=")[1].split('"')[0].replace("&amp;", "&")
        path = f"/tasks?state=FAILURE&after={cursor}"
