"""A prefork child that hit a task's soft time limit runs the next task with no tenant."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from tests.support.tenant_tasks import plain_observe, tenant_observe, tenant_sleep
from tests.support.workers import worker_process

TIMEOUT = 90
CELERY = str(Path(sys.executable).parent / "celery")


def test_ids_are_reset_after_a_soft_time_limit_in_a_prefork_child(
    tenant_app: Celery, role_url: str, tenants: list[uuid.UUID]
) -> None:
    argv = [CELERY, "-A", "tests.support.tenant_app", "worker", "-P", "prefork", "-c", "1"]
    env = {"PGCELERY_DB_POOL_SIZE": "1", "PGCELERY_DB_MAX_OVERFLOW": "0"}
    with worker_process(role_url, argv=[*argv, "--loglevel=INFO"], env=env) as worker:
        before = tenant_observe.delay(tenant_id=tenants[0]).get(timeout=TIMEOUT)
        limited = tenant_sleep.delay(tenant_id=tenants[0], seconds=30)
        limited.get(timeout=TIMEOUT, propagate=False)
        assert isinstance(limited.result, SoftTimeLimitExceeded), worker.output()
        after = plain_observe.delay().get(timeout=TIMEOUT)
        assert worker.alive()
    assert after["os_pid"] == before["os_pid"], "expected the same prefork child"
    assert after["backend_pid"] == before["backend_pid"], "expected the same pooled connection"
    assert (after["tenant_id"], after["tenant_guc"], after["rows"]) == (None, "", 0)
