"""The app of the light-probe acceptance test: only tasks that import nothing heavy."""

from __future__ import annotations

from pgcelery import create_app

app = create_app(include=["tests.support.tasks", "tests.support.probe_tasks"])
