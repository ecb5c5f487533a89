"""Celery settings that would take the broker or the result backend away from PostgreSQL.

Celery reads ``CELERY_BROKER_URL``, ``CELERY_BROKER_READ_URL``, ``CELERY_BROKER_WRITE_URL`` and
``CELERY_RESULT_BACKEND`` from the environment *before* the URLs an app was created with, and a
config module (``CELERY_CONFIG_MODULE``, ``app.config_from_object``) may set the read and write
broker URLs. A leftover ``redis://`` there would silently move the queue off PostgreSQL while
everything else looks configured. pgcelery has no fallback broker: :func:`problems` names every
such override, and :func:`refuse` turns them into a :class:`ConfigurationError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pgcelery import dsn
from pgcelery.exceptions import ConfigurationError

#: Environment variables Celery lets win over an app's own URLs, with the setting each sets.
ENVIRONMENT = {
    "CELERY_BROKER_URL": "broker_url",
    "CELERY_BROKER_READ_URL": "broker_read_url",
    "CELERY_BROKER_WRITE_URL": "broker_write_url",
    "CELERY_RESULT_BACKEND": "result_backend",
}
_BROKER_SETTINGS = ("broker_url", "broker_read_url", "broker_write_url")
_FIX = "pgcelery derives the broker and the result backend from DATABASE_URL alone"


@dataclass(frozen=True)
class Expected:
    """The URLs of an app made by ``create_app`` for one ``DATABASE_URL``."""

    database_url: str

    def accepts(self, setting: str, url: str) -> bool:
        prefix = "db+" if setting == "result_backend" else "sqla+"
        if not url.startswith(prefix):
            return False
        try:
            return dsn.sync_url(url[len(prefix) :]) == dsn.sync_url(self.database_url)
        except ConfigurationError:
            return False


def _describe(source: str, setting: str, url: str) -> str:
    scheme = url.partition("://")[0] or "?"
    postgres = scheme.removeprefix("sqla+").removeprefix("db+") in dsn.ACCEPTED_SCHEMES
    what = "another PostgreSQL URL" if postgres else f"a {scheme}:// URL"
    role = "result backend" if setting == "result_backend" else "broker"
    return f"{source} sets the {role} to {what}, which would replace DATABASE_URL's"


def problems_in_environment(
    expected: Expected, environ: Mapping[str, str] | None = None
) -> list[str]:
    """One line per ``CELERY_*`` variable that would override the app's broker or backend."""
    environ = os.environ if environ is None else environ
    found = []
    for variable, setting in ENVIRONMENT.items():
        value = environ.get(variable, "")
        if value and not expected.accepts(setting, value):
            found.append(f"{_describe(variable, setting, value)}: unset {variable}")
    return found


def problems_in_conf(expected: Expected, read: Callable[[str], object]) -> list[str]:
    """One line per broker or backend URL of an app's configuration that is not pgcelery's.

    ``read(setting)`` returns the effective value (Celery's ``conf`` properties, which put the
    environment first); environment overrides are reported by :func:`problems_in_environment`.
    """
    found = []
    for setting in (*_BROKER_SETTINGS, "result_backend"):
        variable = next(v for v, s in ENVIRONMENT.items() if s == setting)
        if os.environ.get(variable):
            continue
        value = read(setting)
        if isinstance(value, str) and value and not expected.accepts(setting, value):
            source = f"the Celery setting {setting} (a config module or app.conf)"
            found.append(f"{_describe(source, setting, value)}: remove it")
    return found


def refuse(found: list[str]) -> None:
    """Raise :class:`ConfigurationError` naming every override, if there is any."""
    if found:
        raise ConfigurationError(f"{'; '.join(found)} ({_FIX}; there is no fallback broker)")
