"""The default app: ``celery -A pgcelery.celery_app worker`` runs the built-in tasks."""

from __future__ import annotations

from pgcelery.app import create_app

app = create_app()
