"""``pgcelery_tasks_waiting_on_limit`` and ``pgcelery_tenant_pending`` in /metrics' scrape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgcelery.observability.backlog import GLOBAL_GROUP, TOP_TENANTS
from pgcelery.observability.health import DatabaseProbe
from pgcelery.observability.server import ScrapeCollector
from pgcelery.settings import Settings
from tests.support.backlog import TENANT_QUEUE, backlog, limited_tasks, many_tenants

WAITING = "pgcelery_tasks_waiting_on_limit"
PENDING = "pgcelery_tenant_pending"


@pytest.fixture
def probe(settings: Settings) -> Iterator[DatabaseProbe]:
    found = DatabaseProbe(settings)
    yield found
    found.close()


def _series(probe: DatabaseProbe, metric: str) -> dict[tuple[str, ...], float]:
    """The samples of ``metric`` in one scrape of the worker's collector, by label values."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector("w@test", probe))
    body = generate_latest(registry).decode()
    return {
        tuple(s.labels.values()): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == metric
    }


def test_scrape_counts_tasks_held_back_by_their_limit(app: Celery, probe: DatabaseProbe) -> None:
    with backlog(app) as made:
        waiting = _series(probe, WAITING)
        # tests.roomy has free slots: its messages wait for a worker, not for the limit.
        assert waiting == {("celery", "tests.limited"): 2.0, ("celery", "tests.rated"): 2.0}
        made.release()
        # The slot is free: tests.limited's series is gone from the next scrape. The rate's
        # next start is still an hour away, and its released message waits with the others.
        assert _series(probe, WAITING) == {("celery", "tests.rated"): 3.0}


def test_scrape_reports_pending_per_tenant(app: Celery, probe: DatabaseProbe) -> None:
    with backlog(app) as made:
        pending = _series(probe, PENDING)
    assert pending == {
        ("celery", GLOBAL_GROUP): 6.0,
        (TENANT_QUEUE, made.tenant_a): 3.0,
        (TENANT_QUEUE, made.tenant_b): 2.0,
        (TENANT_QUEUE, GLOBAL_GROUP): 1.0,
    }


def test_tenant_series_are_the_biggest_backlogs_and_never_more_than_the_top(
    app: Celery, probe: DatabaseProbe
) -> None:
    tenants = many_tenants(app, TOP_TENANTS + 5)
    pending = _series(probe, PENDING)
    assert len(pending) == TOP_TENANTS
    biggest = tenants[-TOP_TENANTS:]
    assert pending == {(TENANT_QUEUE, t): float(tenants.index(t) + 1) for t in biggest}


def test_nothing_limited_means_no_waiting_series(app: Celery, probe: DatabaseProbe) -> None:
    limited_tasks(app)
    app.send_task("tests.limited")
    app.send_task("tests.add", (1, 1))
    assert _series(probe, WAITING) == {}
    assert _series(probe, PENDING) == {("celery", GLOBAL_GROUP): 2.0}
