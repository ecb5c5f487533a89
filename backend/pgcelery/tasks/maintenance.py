"""``maintenance.*``: periodic upkeep of pgcelery's own tables and the host's views."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from celery import Task, shared_task

from pgcelery.app import settings_of
from pgcelery.backend import _engine
from pgcelery.schema import Names

#: Rows deleted per statement: small enough that no statement holds locks for long.
PRUNE_BATCH = 1000


@shared_task(name="maintenance.prune_results", bind=True)
def prune_results(self: Task, batch_size: int = PRUNE_BATCH) -> dict[str, int]:
    """Delete task and group results older than ``result_expires``, in short batches."""
    settings = settings_of(self.app)
    expires = self.app.conf.result_expires
    seconds = expires.total_seconds() if isinstance(expires, timedelta) else float(expires or 0)
    cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=seconds)
    names = Names(settings.schema_name)
    engine, _ = _engine(settings.sync_url, {"pool_pre_ping": True})
    counts: dict[str, int] = {}
    for key, table in (("tasks", names.task), ("groups", names.group)):
        total = 0
        while True:
            with engine.begin() as connection:
                deleted = connection.execute(
                    sa.text(
                        f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table}"
                        " WHERE date_done < :cutoff ORDER BY date_done LIMIT :n"
                        " FOR UPDATE SKIP LOCKED)"
                    ),
                    {"cutoff": cutoff, "n": batch_size},
                ).rowcount
            total += deleted
            if deleted < batch_size:
                break
        counts[key] = total
    return counts
