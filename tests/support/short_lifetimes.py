"""Transport options of the bounded-state soak: bindings and broadcasts live 5 s instead of
30 s and 10 minutes, so what a soak leaves behind becomes prunable within seconds."""

from __future__ import annotations

from celery import Celery

SOAK_TRANSPORT_OPTIONS = {"binding_ttl": 5.0, "broadcast_max_age": 5.0}


def shorten_lifetimes(celery_app: Celery) -> Celery:
    celery_app.conf.broker_transport_options = {
        **celery_app.conf.broker_transport_options,
        **SOAK_TRANSPORT_OPTIONS,
    }
    return celery_app
