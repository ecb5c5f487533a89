"""Tasks of the light-probe acceptance test: what the worker process has loaded, and the
pool-use gauge seen while a task holds a pgcelery.db connection."""

from __future__ import annotations

import sys

from celery import shared_task


@shared_task(name="tests.probe.loaded")
def loaded(module: str) -> bool:
    return module in sys.modules


@shared_task(name="tests.probe.db_in_use")
def db_in_use(port: int, hostname: str) -> float:
    """``pgcelery_db_pool_connections_in_use`` on the worker's own /metrics, scraped while
    this task holds a pgcelery.db connection (solo pool: the server thread answers)."""
    from pgcelery import db  # here, not at the top: the worker loads SQLAlchemy only now
    from tests.support.scrape import sample
    from tests.support.workers import http_get

    with db.connection():
        status, body = http_get(port, "/metrics")
    assert status == 200, body
    return sample(body, "pgcelery_db_pool_connections_in_use", hostname=hostname)
