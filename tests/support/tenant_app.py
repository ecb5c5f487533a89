"""The app tenancy subprocess workers load: ``celery -A tests.support.tenant_app worker``."""

from __future__ import annotations

from pgcelery import create_app

app = create_app(include=["tests.support.tenant_tasks", "pgcelery.examples.budgeted"])
