"""The app subprocess workers in the tests load: ``celery -A tests.support.app worker``."""

from __future__ import annotations

from pgcelery import create_app

app = create_app(
    include=["tests.support.tasks", "tests.support.broker_tasks", "tests.support.canvas_tasks"]
)
