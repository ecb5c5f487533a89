"""The periodic tasks pgcelery schedules by default, with intervals from the settings.

``create_app`` puts these into ``app.conf.beat_schedule``; add the host's entries with
``app.conf.beat_schedule.update(...)`` (assigning a new dict drops pgcelery's maintenance).
"""

from __future__ import annotations

from typing import Any

from pgcelery.settings import Settings

PRUNE_RESULTS_ENTRY = "pgcelery.prune_results"
REFRESH_VIEWS_ENTRY = "pgcelery.refresh_materialized_views"


def _entry(task: str, interval: float) -> dict[str, Any]:
    # A run that waited a whole interval for a worker is superseded by the next one: expiring
    # it keeps a stopped worker pool from coming back to a pile of identical maintenance runs.
    return {"task": task, "schedule": interval, "options": {"expires": interval}}


def default_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """``maintenance.prune_results`` and, when views are configured, their refresh."""
    schedule: dict[str, dict[str, Any]] = {}
    if settings.beat_prune_results_interval > 0:
        schedule[PRUNE_RESULTS_ENTRY] = _entry(
            "maintenance.prune_results", settings.beat_prune_results_interval
        )
    if settings.materialized_views and settings.beat_refresh_views_interval > 0:
        schedule[REFRESH_VIEWS_ENTRY] = _entry(
            "maintenance.refresh_materialized_views", settings.beat_refresh_views_interval
        )
    return schedule
