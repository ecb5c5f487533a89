"""``celery_queue_paused{queue=}``: 1 for a paused queue in /metrics' scrape-time gauges."""

from __future__ import annotations

from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest

from pgcelery import pause_queue, resume_queue
from pgcelery.observability import metrics
from pgcelery.observability.health import DatabaseProbe
from pgcelery.settings import Settings


class _Queues:
    def __init__(self, probe: DatabaseProbe) -> None:
        self.probe = probe

    def collect(self) -> list[metrics.Metric]:
        return metrics.queue_families(self.probe.queue_stats())


def _scrape(probe: DatabaseProbe) -> str:
    registry = CollectorRegistry()
    registry.register(_Queues(probe))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_paused_gauge_follows_pause_and_resume(app: Celery, settings: Settings) -> None:
    app.send_task("tests.add", args=(1, 1))
    app.send_task("tests.add", args=(1, 1), queue="other")
    probe = DatabaseProbe(settings)
    try:
        assert 'celery_queue_paused{queue="celery"} 0.0' in _scrape(probe)
        pause_queue("celery", settings)
        body = _scrape(probe)
        assert 'celery_queue_paused{queue="celery"} 1.0' in body
        assert 'celery_queue_paused{queue="other"} 0.0' in body
        resume_queue("celery", settings)
        assert 'celery_queue_paused{queue="celery"} 0.0' in _scrape(probe)
    finally:
        probe.close()
