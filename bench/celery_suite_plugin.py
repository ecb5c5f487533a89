"""pytest plugin: run Celery's own integration suite on pgcelery (``python -m bench.celery_suite``).

Loaded with ``-p bench.celery_suite_plugin`` next to Celery's ``t/integration`` conftest, which
builds its apps from ``TEST_BROKER`` / ``TEST_BACKEND``. This plugin makes those URLs pgcelery's:

* ``pgcelery.transport.install()``: ``sqla+postgresql+psycopg://`` is served by pgcelery's
  transport, process-wide, before any app connects;
* ``pgcelery.backend.install(app)`` on every app Celery's fixtures create, so ``db+…`` is
  pgcelery's result backend;
* with ``PGCELERY_SUITE_DEFAULTS=1``, pgcelery's production defaults (``create_app``'s
  settings: late acks, time limits, …) under the suite's own configuration, for
  ``DATABASE_URL``.

It only wires; it changes no test and no Celery code.
"""

from __future__ import annotations

import os
from typing import Any

import pytest


def _with_pgcelery(test_app: Any) -> Any:
    """Celery's ``TestApp`` factory, with pgcelery's backend (and optional defaults) wired in."""

    def build(*args: Any, **kwargs: Any) -> Any:
        app = test_app(*args, **kwargs)
        if os.environ.get("PGCELERY_SUITE_DEFAULTS") == "1":
            from pgcelery.app import production_defaults
            from pgcelery.settings import Settings

            given = kwargs.get("config") or {}
            defaults = production_defaults(Settings())
            app.conf.update({k: v for k, v in defaults.items() if k not in given})
        from pgcelery.results import backend

        backend.install(app)
        return app

    return build


def pytest_configure(config: pytest.Config) -> None:
    from celery.contrib.testing import app as testing_app

    from pgcelery.broker import transport

    transport.install()
    # celery.contrib.pytest imports TestApp from this module each time it builds an app.
    testing_app.TestApp = _with_pgcelery(testing_app.TestApp)
