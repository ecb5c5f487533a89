"""Worker observability: ``/metrics``, ``/health`` and ``/livez``, JSON logs, no secrets.

On a Postgres broker Celery's remote control and events are silent, so Flower and
celery-exporter see nothing; the worker reports on itself instead. :func:`install` wires it
all into an app (``create_app`` calls it); see docs/reference/metrics.md, health.md and
log-fields.md.
"""

from __future__ import annotations

from celery import Celery

from pgcelery.settings import Settings


def install(app: Celery, settings: Settings) -> None:
    """Redaction, logging, task counters and (when enabled) the worker's HTTP server."""
    from pgcelery.observability import logging as json_logging
    from pgcelery.observability import redaction, server, signals

    redaction.register_url(settings.database_url)
    json_logging.configure(settings.log_format)
    json_logging.install()
    signals.install()
    app.pgcelery_observability = True
    server.install(app)
