"""The app the beat tests run: pgcelery's defaults plus one entry due every second."""

from __future__ import annotations

from pgcelery import create_app

EVERY_SECOND = "tests.every_second"

app = create_app(include=["tests.support.tasks", "tests.support.broker_tasks"])
app.conf.beat_schedule.update(
    {EVERY_SECOND: {"task": "tests.record_run", "schedule": 1.0, "args": ("beat",)}}
)
