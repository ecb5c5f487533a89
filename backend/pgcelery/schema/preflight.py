"""``pgcelery check``: can a worker start here? Configuration, database, schema, privileges.

Each check has its own exit code so a deploy script or an init container can tell the failures
apart; the checks run in order and stop at the first failure, since each needs the one before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import psycopg

from pgcelery import celery_overrides, dsn
from pgcelery.exceptions import ConfigurationError, SchemaError
from pgcelery.schema import roles as role_rights
from pgcelery.schema.check import inspect_schema
from pgcelery.schema.names import (
    BEAT_TABLE,
    BINDING_TABLE,
    BROADCAST_TABLE,
    CHORD_PART_TABLE,
    CHORD_TABLE,
    DEAD_LETTER_TABLE,
    GROUP_TABLE,
    LIMIT_STATE_TABLE,
    MESSAGE_TABLE,
    PAUSE_TABLE,
    QUEUE_TABLE,
    TASK_TABLE,
    TENANT_WEIGHT_TABLE,
    UNIQUE_HOLD_TABLE,
    WORKER_TABLE,
)
from pgcelery.settings import Settings


class Exit(IntEnum):
    """``pgcelery check`` exit codes (documented in docs/reference/cli.md)."""

    OK = 0
    CONFIGURATION = 2
    UNREACHABLE = 3
    SCHEMA = 4
    PRIVILEGES = 5


#: What a worker, a producer and beat do to each table; the migrations grant exactly this.
REQUIRED_TABLE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    QUEUE_TABLE: ("SELECT", "INSERT", "DELETE"),
    MESSAGE_TABLE: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    TASK_TABLE: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    GROUP_TABLE: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    WORKER_TABLE: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    BEAT_TABLE: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    BROADCAST_TABLE: ("SELECT", "INSERT", "DELETE"),
    BINDING_TABLE: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    DEAD_LETTER_TABLE: ("SELECT", "INSERT", "DELETE"),
    CHORD_TABLE: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    CHORD_PART_TABLE: ("SELECT", "INSERT", "DELETE"),
    UNIQUE_HOLD_TABLE: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    PAUSE_TABLE: ("SELECT", "INSERT", "DELETE"),
    LIMIT_STATE_TABLE: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    TENANT_WEIGHT_TABLE: ("SELECT", "INSERT", "UPDATE", "DELETE"),
}
REQUIRED_SEQUENCES = (
    "queue_id_sequence",
    "message_id_sequence",
    "task_id_sequence",
    "taskset_id_sequence",
)
CONNECT_TIMEOUT = 10


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str


def missing_privileges(
    conn: psycopg.Connection[Any],
    role: str,
    schema: str,
    tables: dict[str, tuple[str, ...]] = REQUIRED_TABLE_PRIVILEGES,
    sequences: tuple[str, ...] = REQUIRED_SEQUENCES,
) -> list[str]:
    """``"SELECT on kombu_message"``-style descriptions of what ``role`` lacks."""
    missing: list[str] = []
    if not _has(conn, "has_schema_privilege(%s, %s, 'USAGE')", (role, schema)):
        return [f"USAGE on schema {schema}"]
    for table, privileges in tables.items():
        qualified = f'"{schema}"."{table}"'
        for privilege in privileges:
            if not _has(conn, "has_table_privilege(%s, %s, %s)", (role, qualified, privilege)):
                missing.append(f"{privilege} on {table}")
    for sequence in sequences:
        qualified = f'"{schema}"."{sequence}"'
        if not _has(conn, "has_sequence_privilege(%s, %s, 'USAGE')", (role, qualified)):
            missing.append(f"USAGE on sequence {sequence}")
    return missing


def _has(conn: psycopg.Connection[Any], expression: str, params: tuple[str, ...]) -> bool:
    row = conn.execute(f"SELECT {expression}", params).fetchone()
    return bool(row and row[0])


def run_checks(
    report: Callable[[Finding], None], load_app: Callable[[], object] | None = None
) -> Exit:
    """Run every check in order, reporting each; the exit code of the first failure, or OK.

    ``load_app`` (``pgcelery check -A``) imports the service's app and reads its configuration,
    so a config module that moves its broker off ``DATABASE_URL`` fails the configuration check.
    """
    try:
        settings = Settings()
        expected = celery_overrides.Expected(settings.database_url)
        celery_overrides.refuse(celery_overrides.problems_in_environment(expected))
        if load_app is not None:
            load_app()
    except ConfigurationError as exc:
        report(Finding("configuration", False, str(exc)))
        return Exit.CONFIGURATION
    url = settings.database_url
    report(Finding("configuration", True, f"database {dsn.redact(url)}"))
    if not settings.signing_key:
        detail = (
            "WARNING: PGCELERY_SIGNING_KEY is not set: workers trust any tenant header "
            "(set it on producers and workers that run tenant tasks)"
        )
        report(Finding("signing", True, detail))

    try:
        conn = psycopg.connect(dsn.libpq_url(url), connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        detail = f"cannot connect to {dsn.redact(url)}: {_first_line(exc)}"
        report(Finding("database", False, detail))
        return Exit.UNREACHABLE
    with conn:
        row = conn.execute("SELECT current_user, current_setting('server_version')").fetchone()
        user, version = (str(row[0]), str(row[1])) if row else ("?", "?")
        report(Finding("database", True, f"PostgreSQL {version}, connected as {user}"))

        try:
            state = inspect_schema(url, settings.schema_name)
        except SchemaError as exc:
            report(Finding("schema", False, str(exc)))
            return Exit.PRIVILEGES
        except psycopg.Error as exc:
            report(Finding("schema", False, f"cannot read the schema: {_first_line(exc)}"))
            return Exit.UNREACHABLE
        if not state.at_head:
            detail = (
                f"database at {state.current or 'no revision'}, this pgcelery expects "
                f"{state.expected}: run `pgcelery migrate`"
            )
            report(Finding("schema", False, detail))
            return Exit.SCHEMA
        report(Finding("schema", True, f"at head {state.expected} (schema {settings.schema_name})"))

        roles = [user]
        for named in (settings.app_role, *_separate_roles(settings)):
            if named not in roles and _has(
                conn, "EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", (named,)
            ):
                roles.append(named)
        failed = False
        for role in roles:
            missing = missing_privileges(
                conn, role, settings.schema_name, *_required(role, settings)
            )
            if missing:
                failed = True
                detail = (
                    f"role {role} lacks {', '.join(missing)}: run `pgcelery migrate` as the "
                    f"tables' owner with PGCELERY_APP_ROLE={role}"
                )
                report(Finding("privileges", False, detail))
            else:
                report(Finding("privileges", True, f"role {role} has what workers need"))
    return Exit.PRIVILEGES if failed else Exit.OK


def _separate_roles(settings: Settings) -> list[str]:
    return [r for r in (settings.producer_role, settings.worker_role, settings.ops_role) if r]


def _required(role: str, settings: Settings) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """What ``role`` must hold: a producer-only role (PGCELERY_PRODUCER_ROLE, and neither the
    worker nor the ops role) far less than one that runs workers."""
    if role == settings.producer_role and role not in (
        settings.worker_role or settings.app_role,
        settings.ops_role or settings.app_role,
    ):
        return role_rights.PRODUCER_REQUIRED, role_rights.PRODUCER_SEQUENCES
    if role == settings.worker_role and role != (settings.ops_role or settings.app_role):
        # Workers read which queues are paused and the tenants' weights; operators set them.
        worker = {PAUSE_TABLE: ("SELECT",), TENANT_WEIGHT_TABLE: ("SELECT",)}
        return {**REQUIRED_TABLE_PRIVILEGES, **worker}, REQUIRED_SEQUENCES
    return REQUIRED_TABLE_PRIVILEGES, REQUIRED_SEQUENCES


def _first_line(exc: BaseException) -> str:
    # Driver messages never contain the password; keep only the headline.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
