from __future__ import annotations

from celery import Celery

from pgcelery import create_app
from pgcelery.settings import Settings
from tests.support.workers import procfile_worker_command, worker_process


def test_procfile_worker_runs_builtin_tasks(database_url: str) -> None:
    assert procfile_worker_command()[:3] == ["celery", "-A", "pgcelery.celery_app"]
    client: Celery = create_app(settings=Settings(DATABASE_URL=database_url))
    with worker_process(database_url) as worker:
        result = client.send_task("housekeeping.ping", kwargs={"tenant_id": "t-1"})
        reply = result.get(timeout=60)
        assert reply["status"] == "ok"
        assert reply["tenant_id"] == "t-1"
        assert worker.alive()
    assert worker.proc.returncode == 0, worker.output()
