"""Where pgcelery plugs into kombu and Celery: transport, result backend and worker signals."""

from __future__ import annotations

from celery import Celery

from pgcelery.settings import Settings


def install_transport_and_backend() -> None:
    """Process-wide: ``sqla+`` URLs are served by pgcelery's transport."""
    from pgcelery import transport

    transport.install()


def install_app_hooks(app: Celery, settings: Settings) -> None:
    """Per app: the result backend and the worker-side features."""
    from pgcelery import backend, heartbeat, observability, tenancy

    backend.install(app)
    tenancy.install()
    observability.install(app, settings)
    heartbeat.install(app)
