"""Behind a real PgBouncer in transaction pooling mode (poll-only): workers, results, heartbeats
and leases work, with no server-side prepared statements and no startup options anywhere."""

from __future__ import annotations

import pytest
from celery import Celery

from pgcelery import create_app
from pgcelery.settings import Settings
from tests.support import pgbouncer
from tests.support.postgres import scalar
from tests.support.waiting import wait_until
from tests.support.workers import worker_process

POLL_ONLY = {
    "PGCELERY_LISTEN": "false",
    "PGCELERY_POLLING_INTERVAL": "0.1",
    # Leases renewed many times during the test, on whichever server connection PgBouncer picks.
    "PGCELERY_VISIBILITY_TIMEOUT": "1.5",
    "PGCELERY_WORKER_HEARTBEAT_INTERVAL": "1",
}
WORKER = ["celery", "-A", "tests.support.app", "worker", "-l", "WARNING"]


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_a_worker_behind_pgbouncer_transaction_pooling(runs_db: str, pool: str) -> None:
    with pgbouncer.transaction_pooler(runs_db, pool_size=2) as pooled:
        settings = Settings(
            DATABASE_URL=pooled,
            PGCELERY_METRICS_ENABLED=False,
            PGCELERY_LISTEN=False,
            PGCELERY_POLLING_INTERVAL=0.1,
        )
        client: Celery = create_app("pgbouncer-client", include=[], settings=settings)
        concurrency = ["-P", pool, "-c", "2" if pool == "prefork" else "1"]
        try:
            with worker_process(pooled, [*WORKER, *concurrency], POLL_ONLY) as worker:
                results = [client.send_task("tests.add", args=(i, i)) for i in range(40)]
                assert [r.get(timeout=60) for r in results] == [2 * i for i in range(40)]
                # A task that outlives several lease renewals, each on any server connection.
                slow = client.send_task("tests.record_run", args=("slow", 4.0))
                assert slow.get(timeout=60) == "slow"
                wait_until(
                    lambda: scalar(runs_db, "SELECT count(*) FROM pgcelery_worker") == 1,
                    timeout=30,
                    what="a heartbeat through pgbouncer",
                )
                assert worker.alive()
                output = worker.output()
            assert scalar(runs_db, "SELECT count(*) FROM test_runs") == 1
            assert scalar(runs_db, "SELECT count(*) FROM kombu_message") == 0
            for trouble in ("prepared statement", "unsupported startup parameter", "Traceback"):
                assert trouble not in output, output
        finally:
            client.close()
