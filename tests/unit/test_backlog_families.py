"""The backlog gauges are built from what one scrape read, bounded to the biggest tenants."""

from __future__ import annotations

from pgcelery.observability.backlog import (
    GLOBAL_GROUP,
    TOP_TENANTS,
    LimitWait,
    TenantBacklog,
    biggest,
    by_queue,
)
from pgcelery.observability.metrics import backlog_families


def _samples(
    tenants: list[TenantBacklog], waits: list[LimitWait]
) -> dict[str, dict[tuple[str, ...], float]]:
    return {
        family.name: {tuple(s.labels.values()): s.value for s in family.samples}
        for family in backlog_families(tenants, waits)
    }


def test_tenant_series_are_the_biggest_backlogs_over_all_queues() -> None:
    backlogs = [TenantBacklog(f"q{i % 3}", f"t{i}", i) for i in range(TOP_TENANTS * 3)]
    series = _samples(backlogs, [])["pgcelery_tenant_pending"]
    assert len(series) == TOP_TENANTS
    assert min(series.values()) == TOP_TENANTS * 2
    assert [b.pending for b in biggest(backlogs)] == sorted(series.values(), reverse=True)


def test_waiting_series_carry_queue_and_task() -> None:
    waits = [LimitWait("celery", "app.sync", 4), LimitWait("bulk", "app.export", 1)]
    series = _samples([], waits)["pgcelery_tasks_waiting_on_limit"]
    assert series == {("celery", "app.sync"): 4.0, ("bulk", "app.export"): 1.0}


def test_nothing_read_gives_families_without_series() -> None:
    assert _samples([], []) == {
        "pgcelery_tenant_pending": {},
        "pgcelery_tasks_waiting_on_limit": {},
    }


def test_rows_grouped_by_queue_keep_their_order() -> None:
    rows = [
        TenantBacklog("a", "t1", 5),
        TenantBacklog("b", GLOBAL_GROUP, 4),
        TenantBacklog("a", GLOBAL_GROUP, 2),
    ]
    grouped = by_queue(rows)
    assert list(grouped) == ["a", "b"]
    assert [r.tenant for r in grouped["a"]] == ["t1", GLOBAL_GROUP]
    assert grouped["b"][0].is_global
