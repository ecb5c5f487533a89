"""What every subcommand reads from its environment, argument types they share, and how the
errors of a database, a schema or a configuration become one line and an exit code."""

from __future__ import annotations

import argparse

import psycopg
import psycopg.errors
import sqlalchemy.exc

from pgcelery import dsn, variables
from pgcelery.exceptions import ConfigurationError, SchemaError
from pgcelery.schema import preflight

Exit = preflight.Exit


def database_url() -> str:
    """``DATABASE_URL`` from the environment, else from ``.env`` (as :class:`Settings` reads)."""
    url = variables.variable("DATABASE_URL")
    if not url:
        raise ConfigurationError(
            "DATABASE_URL is not set: set it to a PostgreSQL URL "
            "(postgresql://user:password@host:5432/dbname)."
        )
    return url


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h`` or ``7d``, in seconds."""
    unit = text[-1:].lower()
    number = text[:-1] if unit in _UNITS else text
    try:
        seconds = float(number) * _UNITS.get(unit, 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write seconds, or a number with s, m, h or d (7d)"
        ) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("a duration cannot be negative")
    return seconds


def _headline(exc: BaseException) -> str:
    # Driver messages never contain the password; keep only their first line.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _where() -> str:
    url = variables.variable("DATABASE_URL")
    return f"the database in DATABASE_URL ({dsn.redact(url)})" if url else "the database"


def explain(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message with the fix) for an error a subcommand may meet, or
    ``None`` for a bug (which keeps its traceback)."""
    if isinstance(exc, ConfigurationError):
        return Exit.CONFIGURATION, str(exc)
    if isinstance(exc, SchemaError):
        return Exit.SCHEMA, str(exc)
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
        return Exit.SCHEMA, (
            f"pgcelery's tables are not in {_where()} ({_headline(exc)}): run `pgcelery migrate` "
            "with the same DATABASE_URL and PGCELERY_SCHEMA"
        )
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return Exit.PRIVILEGES, (
            f"permission denied in {_where()} ({_headline(exc)}): run `pgcelery migrate` as the "
            "tables' owner with PGCELERY_APP_ROLE set to this role; `pgcelery check` lists "
            "what is missing"
        )
    if isinstance(exc, psycopg.OperationalError | sqlalchemy.exc.OperationalError):
        return Exit.UNREACHABLE, (
            f"cannot reach {_where()}: {_headline(exc)}: check DATABASE_URL, that the server "
            "is up and that the database exists"
        )
    if isinstance(exc, psycopg.Error):
        return 1, f"database error in {_where()}: {type(exc).__name__}: {_headline(exc)}"
    return None
