"""The app of the bounded-state soak: ``celery -A tests.support.pruning_app worker|inspect``.

``create_app``'s production setup with the soak's short binding and broadcast lifetimes
(:mod:`tests.support.short_lifetimes`).
"""

from __future__ import annotations

from pgcelery import create_app
from tests.support.short_lifetimes import shorten_lifetimes

app = shorten_lifetimes(create_app(include=["tests.support.tasks"]))
