"""Fail fast: refuse to run against a database whose pgcelery schema is missing or not at head.

pgcelery never creates tables at run time, so a worker or producer pointed at an unmigrated (or
half-migrated) database would otherwise fail later, mid-task, with a raw SQL error. The transport
calls :func:`check_schema` when it first connects; a passing check is remembered for the rest of
the process, a failing one is repeated on the next connection so a process recovers by itself
once someone runs the migration.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import psycopg

from pgcelery import dsn
from pgcelery.exceptions import SchemaBehind, SchemaError, SchemaNotMigrated
from pgcelery.schema import revisions

log = logging.getLogger(__name__)

_FIX = "run `pgcelery migrate` (or `alembic upgrade heads` in a host's Alembic project)"
_PASSED: set[tuple[str, str]] = set()
_PASSED_LOCK = threading.Lock()


@dataclass(frozen=True)
class SchemaState:
    """Where the database is and where this code expects it to be."""

    current: str | None
    expected: str

    @property
    def at_head(self) -> bool:
        return self.current == self.expected


def inspect_schema(database_url: str, schema: str = "public") -> SchemaState:
    """Read the pgcelery revision of the database at ``database_url`` (pgcelery's or the host's
    version table); connection failures propagate as ``psycopg.OperationalError``."""
    with psycopg.connect(dsn.libpq_url(database_url), autocommit=True) as conn:

        def query(sql: str, params: dict[str, object]) -> list[tuple[object, ...]]:
            return conn.execute(sql, params).fetchall()

        try:
            found = revisions.recorded(query, schema)
        except psycopg.errors.InsufficientPrivilege as exc:
            # The version table exists but this role may not read it.
            raise SchemaError(
                f"cannot read the pgcelery version table in schema {schema!r} of "
                f"{dsn.redact(database_url)} ({type(exc).__name__}): "
                f"{_FIX} as the owner with PGCELERY_APP_ROLE set to this role"
            ) from None
    return SchemaState(current=found[0] if found else None, expected=revisions.head())


def check_schema(database_url: str, schema: str = "public") -> None:
    """Raise unless the database's pgcelery schema is at head; cached once it passes.

    :raises SchemaNotMigrated: the pgcelery tables were never created.
    :raises SchemaBehind: the database is at an older pgcelery revision than this code.
    """
    key = (database_url, schema)
    if key in _PASSED:
        return
    state = inspect_schema(database_url, schema)
    where = f"{dsn.redact(database_url)} (schema {schema!r})"
    if state.current is None:
        log.error(
            "pgcelery.schema.not_migrated",
            extra={"expected": state.expected, "schema": schema},
        )
        raise SchemaNotMigrated(
            f"pgcelery tables do not exist in {where}: {_FIX}; "
            f"database at no revision, code expects {state.expected}"
        )
    if not state.at_head:
        log.error(
            "pgcelery.schema.behind",
            extra={"current": state.current, "expected": state.expected, "schema": schema},
        )
        raise SchemaBehind(
            f"pgcelery schema in {where} is behind the code: {_FIX}; "
            f"database at {state.current}, code expects {state.expected}"
        )
    with _PASSED_LOCK:
        _PASSED.add(key)


def forget_checks() -> None:
    """Check every database again on its next connection (after migrating in-process)."""
    with _PASSED_LOCK:
        _PASSED.clear()
